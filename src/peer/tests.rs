//! Unit tests of `peer`.

use super::*;

fn unit(p: &str) -> Option<&'static str> {
    path_unit(p).map(|s| &*s.leak())
}
fn user_unit(p: &str) -> Option<&'static str> {
    path_user_unit(p).map(|s| &*s.leak())
}
fn slice(p: &str) -> Option<&'static str> {
    path_slice(p).map(|s| &*s.leak())
}

/// The cases of systemd's test-cgroup-util.c (test_path_get_unit, test_path_get_user_unit,
/// test_path_get_slice), which define what sd_pid_get_unit(3) answers.
#[test]
fn units_as_systemd_parses_them() {
    assert_eq!(
        unit("/system.slice/foobar.service/sdfdsaf"),
        Some("foobar.service")
    );
    assert_eq!(
        unit("/system.slice/getty@tty5.service"),
        Some("getty@tty5.service")
    );
    assert_eq!(
        unit("/system.slice/getty@tty5.service/aaa/bbb"),
        Some("getty@tty5.service")
    );
    assert_eq!(
        unit("/system.slice/getty@tty5.service/"),
        Some("getty@tty5.service")
    );
    assert_eq!(
        unit("/system.slice/getty@tty6.service/tty5"),
        Some("getty@tty6.service")
    );
    assert_eq!(unit("sadfdsafsda"), None);
    assert_eq!(unit("/system.slice/getty####@tty6.service/xxx"), None);
    assert_eq!(
        unit("/system.slice/system-waldo.slice/foobar.service"),
        Some("foobar.service")
    );
    assert_eq!(
        unit("/system.slice/system-waldo.slice/_cpu.service"),
        Some("cpu.service")
    );
    assert_eq!(
        unit("/user.slice/user-1000.slice/user@1000.service/server.service"),
        Some("user@1000.service")
    );
    assert_eq!(
        unit("/user.slice/user-1000.slice/user@.service/server.service"),
        None
    );
    assert_eq!(unit("/system.slice/demo.service"), Some("demo.service"));
    assert_eq!(unit("/"), None);
    assert_eq!(unit("/system.slice"), None);
    assert_eq!(
        unit("/system.slice/foo@.service"),
        None,
        "a template is no unit"
    );
    assert_eq!(unit("/system.slice/foo.bar"), None, "no such unit type");
}

#[test]
fn user_units_as_systemd_parses_them() {
    assert_eq!(
        user_unit("/user.slice/user-1000.slice/session-2.scope/foobar.service"),
        Some("foobar.service")
    );
    assert_eq!(
        user_unit("/user.slice/user-1000.slice/session-2.scope/waldo.slice/foobar.service"),
        Some("foobar.service")
    );
    assert_eq!(
        user_unit("/user.slice/user-1002.slice/session-2.scope/foobar.service/waldo"),
        Some("foobar.service")
    );
    assert_eq!(
        user_unit("/user.slice/user-1000.slice/session-2.scope/foobar.service/waldo/uuuux"),
        Some("foobar.service")
    );
    assert_eq!(
        user_unit("/user.slice/user-1000.slice/session-2.scope/waldo/waldo/uuuux"),
        None
    );
    assert_eq!(
        user_unit("/user.slice/user-1000.slice/session-2.scope/foobar@pie.service/pa/po"),
        Some("foobar@pie.service")
    );
    assert_eq!(
        user_unit("/session-2.scope/foobar@pie.service/pa/po"),
        Some("foobar@pie.service")
    );
    assert_eq!(
        user_unit("/xyz.slice/xyz-waldo.slice/session-77.scope/foobar@pie.service/pa/po"),
        Some("foobar@pie.service")
    );
    assert_eq!(user_unit("/meh.service"), None);
    assert_eq!(
        user_unit("/session-3.scope/_cpu.service"),
        Some("cpu.service")
    );
    assert_eq!(
        user_unit("/user.slice/user-1000.slice/user@1000.service/server.service"),
        Some("server.service")
    );
    assert_eq!(
        user_unit("/user.slice/user-1000.slice/user@1000.service/foobar.slice/foobar@pie.service"),
        Some("foobar@pie.service")
    );
    assert_eq!(
        user_unit("/user.slice/user-1000.slice/user@.service/server.service"),
        None
    );
    assert_eq!(
        user_unit("/user.slice/user-1000.slice/user@65535.service/server.service"),
        None,
        "an invalid uid"
    );
    assert_eq!(user_unit("/system.slice/demo.service"), None);
}

#[test]
fn slices_as_systemd_parses_them() {
    assert_eq!(slice("/user.slice"), Some("user.slice"));
    assert_eq!(slice("/foobar"), Some("-.slice"));
    assert_eq!(
        slice("/user.slice/user-waldo.slice"),
        Some("user-waldo.slice")
    );
    assert_eq!(slice(""), Some("-.slice"));
    assert_eq!(slice("foobar"), Some("-.slice"));
    assert_eq!(slice("foobar.slice"), Some("foobar.slice"));
    assert_eq!(
        slice("foo.slice/foo-bar.slice/waldo.service"),
        Some("foo-bar.slice")
    );
    assert_eq!(slice("/system.slice/demo.service"), Some("system.slice"));
}

#[test]
fn the_unified_line_is_the_one_read() {
    let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/demo.service\n";
    assert_eq!(unified_path(hybrid), Some("/system.slice/demo.service"));
    assert_eq!(unified_path("1:cpu:/\n"), None, "v1 only: nothing");
    assert_eq!(unified_path("0::/gone.service (deleted)\n"), None);
}

#[test]
fn paths_are_shifted_below_the_root_of_a_container() {
    assert_eq!(
        shift("/system.slice/a.service", "/"),
        "/system.slice/a.service"
    );
    let root = "/machine.slice/machine-c.scope";
    assert_eq!(
        shift(
            "/machine.slice/machine-c.scope/system.slice/a.service",
            root
        ),
        "/system.slice/a.service"
    );
    assert_eq!(shift("/machine.slice/machine-c.scope", root), "/");
    assert_eq!(
        shift("/machine.slice/machine-cd.scope/x", root),
        "/machine.slice/machine-cd.scope/x"
    );
}

#[test]
fn object_fields_only_for_root_and_never_object_pid() {
    let mut a = Attribution::from_cgroup(Some("/system.slice/demo.service"));
    a.comm = Some("socat".to_owned());
    let names = |objects| {
        a.fields(objects)
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(false),
        [
            "CLIENT_COMM=socat",
            "CLIENT_UNIT=demo.service",
            "CLIENT_SLICE=system.slice",
            "CLIENT_CGROUP=/system.slice/demo.service"
        ]
    );
    let with = names(true);
    assert!(with.contains(&"OBJECT_SYSTEMD_UNIT=demo.service".to_owned()));
    assert!(with.contains(&"OBJECT_COMM=socat".to_owned()));
    assert!(
        !with
            .iter()
            .any(|f| f.starts_with("OBJECT_PID") || f.starts_with("OBJECT_SYSTEMD_USER_UNIT"))
    );
}

#[test]
fn this_process_is_resolved_and_no_pid_resolves_nothing() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let me = Attribution::of_peer(std::os::fd::AsFd::as_fd(&a), std::process::id() as i32);
    assert!(me.comm.is_some(), "{me:?}");
    drop(b);
    assert_eq!(
        Attribution::of_peer(std::os::fd::AsFd::as_fd(&a), 0),
        Attribution::default()
    );
}
