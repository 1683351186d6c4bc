//! The `<N>` prefix parser: never panics, never invents bytes, only valid priorities.
#![no_main]

use app::protocol::parse_prefix;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (prefix, rest) = parse_prefix(data);
    match prefix {
        None => assert_eq!(rest, data, "no prefix: the text is kept whole"),
        Some(p) => {
            assert!(p.priority <= 7);
            assert!(p.facility.is_none_or(|f| (1..=23).contains(&f)));
            assert!(data.ends_with(rest));
            let taken = &data[..data.len() - rest.len()];
            assert!(taken.len() >= 3 && taken.len() <= 5, "{taken:?}");
            let n: u16 = std::str::from_utf8(&taken[1..taken.len() - 1])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(n % 8, u16::from(p.priority));
        }
    }
});
