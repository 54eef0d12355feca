//! The reload plan: what applies at once, what waits for a restart.

use super::*;
use crate::config::cli::{self, Cmd};

fn config(argv: &[&str]) -> Config {
    let full = ["ringboot", "serve", "--root", "/srv/tftp"]
        .iter()
        .chain(argv);
    let a = match cli::try_parse_from(full) {
        Ok(c) => {
            let (Cmd::Serve(a) | Cmd::Check(a)) = c.cmd;
            a
        }
        Err(e) => panic!("{argv:?}: {e}"),
    };
    crate::config::from_text(None, &a)
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

#[test]
fn nothing_changed_nothing_to_do() {
    let c = config(&[]);
    assert_eq!(plan(&c, &c, false), Plan::default());
}

#[test]
fn transfer_options_and_caps_apply_without_restart() {
    let old = config(&["--max-blksize", "1468", "--max-transfers", "10"]);
    let next = config(&[
        "--max-blksize",
        "512",
        "--max-window",
        "4",
        "--retries",
        "3",
        "--max-transfers",
        "100",
    ]);
    let p = plan(&old, &next, false);
    assert!(p.transfer_options && p.caps, "{p:?}");
    assert!(p.restart.is_empty(), "{p:?}");
}

#[test]
fn mtftp_list_applies_when_the_service_runs_with_its_port_bound() {
    let old = config(&["--mtftp", "a.bin@239.1.1.1:1758"]);
    let next = config(&[
        "--mtftp",
        "a.bin@239.1.1.1:1758",
        "--mtftp",
        "b.bin@239.1.1.2:1758",
    ]);
    let p = plan(&old, &next, true);
    assert!(p.multicast && p.restart.is_empty(), "{p:?}");
    let live = old.multicast.with_session_settings(&next.multicast);
    assert_eq!(live.mtftp.len(), 2);
    // Emptied: the port stays bound, every open is refused.
    let p = plan(&next, &config(&[]), true);
    assert!(p.multicast && p.restart.is_empty(), "{p:?}");
}

#[test]
fn what_is_bound_at_start_needs_a_restart() {
    let old = config(&[]);
    let next = config(&["--mtftp", "a.bin@239.1.1.1:1758"]);
    let p = plan(&old, &next, false);
    assert!(!p.multicast);
    assert_eq!(p.restart, vec!["multicast (off at start)"]);
    let old = config(&["--multicast-groups", "239.255.0.0/24"]);
    let p = plan(&old, &next, true);
    assert!(
        p.restart
            .contains(&"mtftp (none at start: its port is not bound)"),
        "{p:?}"
    );
    let p = plan(
        &config(&[]),
        &config(&[
            "--listen",
            "127.0.0.1:6969",
            "--workers",
            "3",
            "--user",
            "nobody",
        ]),
        false,
    );
    // The MTFTP port is bound on the IPv4 listen addresses too.
    assert_eq!(
        p.restart,
        vec![
            "listen",
            "workers",
            "user/group",
            "multicast groups/ports/listen/member caps"
        ]
    );
}
