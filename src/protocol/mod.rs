//! The wire protocol (DESIGN §2): cutting a byte stream into messages, and the `<N>` prefix.
//!
//! Pure code, no I/O: the connection feeds it whatever it read, and it hands back messages as
//! borrowed slices. Memory per connection is bounded by `max_line_bytes`: a line that grows past
//! it is cut into pieces (`LINE_BREAK=line-max`), as journald does with its `LineMax=`.

mod datagram;
mod framer;
pub mod json;
mod prefix;
pub mod syslog;

pub use datagram::datagram_pieces;
pub use framer::{Framer, FramerState, LineBreak, Message};
pub use prefix::{Prefix, parse_prefix};
