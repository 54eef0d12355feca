//! The config model as a whole: defaults, the merge of file and flags, validation, messages.

use super::cli::{self, Cmd, ServeArgs};
use super::dhcp::PoolRange;
use super::*;
use crate::sys::iface::IfAddr;

/// `ringboot serve ARGS`, parsed as the binary parses it.
fn args(argv: &[&str]) -> ServeArgs {
    let full = ["ringboot", "serve"].iter().chain(argv);
    match cli::try_parse_from(full) {
        Ok(c) => {
            let (Cmd::Serve(a) | Cmd::Check(a)) = c.cmd;
            a
        }
        Err(e) => panic!("{argv:?}: {e}"),
    }
}

fn usage_error(argv: &[&str]) -> String {
    let full = ["ringboot", "serve"].iter().chain(argv);
    match cli::try_parse_from(full) {
        Ok(_) => panic!("{argv:?} should be refused"),
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{e}");
            e.to_string()
        }
    }
}

/// Load `text` as the file `ringboot.toml` with the flags `argv` over it.
fn load_with(text: &str, argv: &[&str]) -> Result<(Config, Vec<Problem>), ConfigErrors> {
    let mut a = vec!["--config", "ringboot.toml"];
    a.extend_from_slice(argv);
    from_text(Some(text), &args(&a))
}

fn config(text: &str, argv: &[&str]) -> Config {
    let (c, w) = load_with(text, argv).unwrap_or_else(|e| panic!("{e}"));
    assert!(w.is_empty(), "unexpected warnings: {w:?}");
    c
}

fn refused(text: &str, argv: &[&str]) -> Vec<String> {
    match load_with(text, argv) {
        Ok(_) => panic!("should be refused: {text:?} {argv:?}"),
        Err(e) => e.0.iter().map(Problem::to_string).collect(),
    }
}

#[test]
fn defaults() {
    let (c, w) = from_text(None, &args(&["--root", "/srv/tftp"])).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.root, PathBuf::from("/srv/tftp"));
    assert_eq!(c.listen, DEFAULT_LISTEN.to_vec());
    assert_eq!(c.workers, None);
    // The same defaults as the core's own.
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.min_rto, Duration::from_millis(2));
    assert_eq!(c.port_range, None);
    assert_eq!(c.backend, BackendChoice::Auto);
    assert_eq!(
        c.caps,
        Caps {
            max_transfers: None,
            max_per_client: None,
            client_rate: 16
        }
    );
    assert_eq!(c.store.small_file_limit, 65536);
    let m = &c.multicast;
    assert!(!m.enabled());
    assert_eq!((m.mtftp_port, m.multicast_port), (1759, 1758));
    assert_eq!(m.rate, 100 * 125_000);
    assert_eq!(m.window, 16);
    assert_eq!(m.timeout, Duration::from_millis(200));
    assert_eq!(m.ttl, 1);
    assert!(m.loopback);
    assert_eq!(m.retries, 5);
    assert_eq!(m.max_members, mcast::DEFAULT_MAX_MEMBERS);
    assert_eq!(m.max_per_source, mcast::DEFAULT_MAX_PER_SOURCE);
    assert_eq!(m.listen, vec![Ipv4Addr::UNSPECIFIED]);
    assert_eq!(c.dhcp, DhcpConfig::default());
    assert_eq!(
        c.log,
        LogConfig {
            verbose: 0,
            format: LogFormat::Text
        }
    );
}

#[test]
fn every_flag_sets_its_value() {
    let c = config(
        "",
        &[
            "--root",
            "/r",
            "--listen",
            "127.0.0.1:6969",
            "--listen",
            "[::1]:6969",
            "--workers",
            "3",
            "--max-blksize",
            "1468",
            "--max-window",
            "8",
            "--max-window-bytes",
            "65536",
            "--timeout",
            "5",
            "--min-rto",
            "20",
            "--retries",
            "4",
            "--port-range",
            "5000:5100",
            "--max-transfers",
            "100",
            "--max-transfers-per-client",
            "7",
            "--client-rate",
            "0",
            "--allow-fragmentation",
            "--small-file-limit",
            "1024",
            "--io-backend",
            "fallback",
            "-vv",
            "--log-format",
            "json",
            "--mtftp",
            "boot.wim@239.255.1.1:3001",
            "--mtftp-port",
            "1760",
            "--multicast-groups",
            "239.255.42.0/24",
            "--multicast-port",
            "1757",
            "--multicast-rate",
            "8",
            "--multicast-window",
            "4",
            "--multicast-timeout",
            "0",
            "--multicast-ttl",
            "3",
            "--multicast-interface",
            "10.0.0.1",
            "--multicast-loop",
            "false",
            "--multicast-max-members",
            "9",
            "--multicast-max-per-source",
            "2",
        ],
    );
    assert_eq!(c.listen.len(), 2);
    assert!(c.listen.iter().all(|l| !l.optional));
    assert_eq!(c.workers, NonZeroUsize::new(3));
    assert_eq!(c.limits.max_blksize.get(), 1468);
    assert_eq!(c.limits.max_window.get(), 8);
    assert_eq!(c.limits.max_window_bytes, 65536);
    assert_eq!(c.limits.timeout, Duration::from_secs(5));
    assert_eq!(c.limits.retries, 4);
    assert!(c.limits.allow_fragmentation);
    assert_eq!(c.min_rto, Duration::from_millis(20));
    assert_eq!(c.port_range, PortRange::new(5000, 5100));
    assert_eq!(
        c.caps,
        Caps {
            max_transfers: Some(100),
            max_per_client: Some(7),
            client_rate: 0
        }
    );
    assert_eq!(c.store.small_file_limit, 1024);
    assert_eq!(c.backend, BackendChoice::Fallback);
    assert_eq!(
        c.log,
        LogConfig {
            verbose: 2,
            format: LogFormat::Json
        }
    );
    let m = &c.multicast;
    assert!(m.enabled());
    assert_eq!(m.mtftp[0].file, "boot.wim");
    assert_eq!(m.mtftp_port, 1760);
    assert!(m.groups.is_some());
    assert_eq!(m.multicast_port, 1757);
    assert_eq!(m.rate, 1_000_000);
    assert_eq!(m.window, 4);
    // 0 ms counts as 1 ms, as before.
    assert_eq!(m.timeout, Duration::from_millis(1));
    assert_eq!(m.ttl, 3);
    assert_eq!(m.interface, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert!(!m.loopback);
    assert_eq!((m.max_members, m.max_per_source), (9, 2));
    // IPv4 listening addresses only.
    assert_eq!(m.listen, vec![Ipv4Addr::LOCALHOST]);
}

#[test]
fn the_command_line_wins_over_the_file() {
    let file = r#"
root = "/srv/tftp"
listen = ["0.0.0.0:6969", "[::]:6969"]
max_blksize = 1468
timeout = 2
mtftp = ["a.wim@239.255.1.1:3001", "b.wim@239.255.1.2:3001"]
allow_fragmentation = true
verbose = 1
"#;
    let c = config(file, &[]);
    assert_eq!(c.root, PathBuf::from("/srv/tftp"));
    assert_eq!(c.listen.len(), 2);
    assert_eq!(c.limits.max_blksize.get(), 1468);
    assert_eq!(c.limits.timeout, Duration::from_secs(2));
    assert_eq!(c.multicast.mtftp.len(), 2);
    assert_eq!(c.log.verbose, 1);

    let c = config(
        file,
        &[
            "--root",
            "/other",
            "--listen",
            "127.0.0.1:1069",
            "--max-blksize",
            "512",
            "--mtftp",
            "c.wim@239.255.1.3:3001",
            "--allow-fragmentation",
            "false",
            "-vv",
        ],
    );
    assert_eq!(c.root, PathBuf::from("/other"));
    // A repeatable flag replaces the file's list.
    assert_eq!(c.listen.len(), 1);
    assert_eq!(c.listen[0].addr, "127.0.0.1:1069".parse().unwrap());
    assert_eq!(c.multicast.mtftp.len(), 1);
    assert_eq!(c.multicast.mtftp[0].file, "c.wim");
    assert_eq!(c.limits.max_blksize.get(), 512);
    // Keys without a flag keep the file's value.
    assert_eq!(c.limits.timeout, Duration::from_secs(2));
    assert!(!c.limits.allow_fragmentation);
    assert_eq!(c.log.verbose, 2);
    // The last of a flag given twice.
    let c = config(file, &["--max-blksize", "512", "--max-blksize", "1024"]);
    assert_eq!(c.limits.max_blksize.get(), 1024);
}

#[test]
fn dhcp_flags_set_keys_of_the_dhcp_table() {
    let file = r#"
root = "/srv/tftp"
[dhcp]
mode = "proxy"
interface = "eth0"
boot_file = "pxelinux.0"
dns = ["10.0.0.1"]
"#;
    let c = config(file, &[]);
    assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
    let c = config(
        file,
        &[
            "--dhcp",
            "full",
            "--dhcp-range",
            "10.0.0.100,10.0.0.150",
            "--boot-file",
            "ipxe.efi",
            "--dhcp-lease-file",
            "/tmp/x.leases",
        ],
    );
    let d = &c.dhcp;
    assert_eq!(d.mode, DhcpMode::Full);
    assert_eq!(d.interface.as_deref(), Some("eth0"));
    assert_eq!(d.boot_file.as_deref(), Some("ipxe.efi"));
    assert_eq!(
        d.range,
        Some(PoolRange {
            start: Ipv4Addr::new(10, 0, 0, 100),
            end: Ipv4Addr::new(10, 0, 0, 150)
        })
    );
    assert_eq!(d.lease_file, Some(PathBuf::from("/tmp/x.leases")));
    assert_eq!(d.dns, vec![Ipv4Addr::new(10, 0, 0, 1)]);
    // Without a file: the flags alone.
    let c = config(
        "root = \"/r\"",
        &[
            "--dhcp",
            "proxy",
            "--dhcp-interface",
            "eth1",
            "--boot-file",
            "pxelinux.0",
        ],
    );
    assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
    assert_eq!(c.dhcp.interface.as_deref(), Some("eth1"));
}

#[test]
fn mtftp_files_are_advertised_by_dhcp() {
    let file = r#"
root = "/r"
mtftp = ["pxelinux.0@239.255.1.9:3009", "boot.wim@239.255.1.1:3001"]
mtftp_port = 1760
[dhcp]
mode = "proxy"
boot_file = "pxelinux.0"
[[dhcp.mtftp]]
file = "boot.wim"
client_port = 4000
"#;
    let c = config(file, &[]);
    let m = &c.dhcp.mtftp;
    assert_eq!(m.len(), 2, "{m:?}");
    // The table's own entry stays as written.
    assert_eq!(m[0].file, "boot.wim");
    assert_eq!(m[0].client_port, 4000);
    assert_eq!(m[1].file, "pxelinux.0");
    assert_eq!(m[1].group, Ipv4Addr::new(239, 255, 1, 9));
    assert_eq!((m[1].client_port, m[1].server_port), (3009, 1760));
}

#[test]
fn a_missing_root_is_named() {
    let e = refused("max_blksize = 1468", &[]);
    assert_eq!(
        e,
        ["no directory to serve: give --root DIR or the config key `root`"]
    );
}

#[test]
fn every_dhcp_problem_is_reported() {
    let e = refused(
        "root = \"/r\"\n[dhcp]\nmode = \"proxy\"\nclient_rate = 0\nsegment_rate = 0\n",
        &[],
    );
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].contains("needs a boot file"), "{e:#?}");
    assert!(e[1].contains("[dhcp] client_rate"), "{e:#?}");
    assert!(e[2].contains("[dhcp] segment_rate"), "{e:#?}");
    let e = refused("root = \"/r\"", &["--dhcp", "full", "--boot-file", "x"]);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].contains("full DHCP mode needs an address pool"),
        "{e:#?}"
    );
    assert!(e[1].contains("explicit interface"), "{e:#?}");
    let e = refused(
        "root = \"/r\"\n[dhcp]\nmode = \"full\"\nboot_file = \"x\"\nrange = \"10.0.0.2,10.0.0.9\"\nlease_time = 10\n",
        &[],
    );
    assert!(
        e[0].contains("lease_time") && e[0].contains("60 s"),
        "{e:#?}"
    );
}

#[test]
fn file_problems_come_before_merging() {
    // A file problem is reported even when a flag would override the key.
    let e = refused(
        "root = \"/r\"\nmax_blksize = \"1468\"\n",
        &["--max-blksize", "512"],
    );
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("ringboot.toml:2:15: max_blksize:"),
        "{e:?}"
    );
}

#[test]
fn warnings_name_what_is_ignored() {
    let (_, w) = load_with(
        "root = \"/r\"\n[metrics]\nlisten = \"127.0.0.1:9100\"\n[http]\n",
        &[],
    )
    .unwrap();
    let w: Vec<String> = w.iter().map(Problem::to_string).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("[http] table is reserved"), "{w:?}");
    let (c, w) = load_with("root = \"/r\"", &["--boot-file", "pxelinux.0"]).unwrap();
    assert_eq!(c.dhcp.mode, DhcpMode::Off);
    assert_eq!(w.len(), 1);
    assert!(w[0].message.contains("DHCP responder is off"), "{w:?}");
    assert!(
        w[0].message.contains("--boot-file"),
        "the ignored flag is named: {w:?}"
    );
}

#[test]
fn command_line_errors_are_clap_errors() {
    let e = usage_error(&["--root", "/r", "--max-blksize", "7"]);
    assert!(
        e.contains("invalid value '7' for '--max-blksize <N>': 7 is not in 8..=65464"),
        "{e}"
    );
    let e = usage_error(&["--root", "/r", "--max-window", "40000"]);
    assert!(e.contains("40000 is not in 1..=32767"), "{e}");
    let e = usage_error(&["--root", "/r", "--timeout", "0"]);
    assert!(e.contains("--timeout") && e.contains("1s..=255s"), "{e}");
    let e = usage_error(&["--root", "/r", "--workers", "0"]);
    assert!(e.contains("0 is not in 1..=4096"), "{e}");
    let e = usage_error(&["--root", "/r", "--dhcp", "fulll"]);
    assert!(e.contains("unknown DHCP mode"), "{e}");
    let e = usage_error(&["--root", "/r", "--dhcp-range", "10.0.0.9,10.0.0.1"]);
    assert!(e.contains("bad DHCP range"), "{e}");
    let e = usage_error(&["--root", "/r", "--io-backend", "urin"]);
    assert!(e.contains("possible values: auto, uring, fallback"), "{e}");
    let e = usage_error(&["--root", "/r", "--allow-fragmentation", "yes"]);
    assert!(e.contains("--allow-fragmentation"), "{e}");
    let e = usage_error(&[]);
    assert!(e.contains("--root <DIR>"), "{e}");
    // --config stands in for --root.
    args(&["--config", "x.toml"]);
}

#[test]
fn every_flag_is_a_key() {
    let serve = cli::command();
    let serve = serve.find_subcommand("serve").unwrap();
    let dhcp_flags = [
        "dhcp",
        "dhcp_interface",
        "boot_file",
        "dhcp_range",
        "dhcp_lease_file",
    ];
    for a in serve.get_arguments() {
        let id = a.get_id().as_str();
        if a.get_long().is_none() || ["config", "fault", "help"].contains(&id) {
            continue;
        }
        let text = if dhcp_flags.contains(&id) {
            // The DHCP flags are keys of [dhcp], under names of their own.
            let key = match id {
                "dhcp" => "mode",
                "dhcp_interface" => "interface",
                "dhcp_range" => "range",
                "dhcp_lease_file" => "lease_file",
                k => k,
            };
            format!("[dhcp]\n{key} = 0\n")
        } else {
            format!("{id} = 0\n")
        };
        if let Err(e) = file::parse(Path::new("t.toml"), &text) {
            assert!(
                e.iter().all(|p| !p.message.contains("unknown key")),
                "--{}: no key {text:?}: {e:?}",
                a.get_long().unwrap()
            );
        }
    }
}

#[test]
fn help_shows_the_defaults() {
    let mut cmd = cli::command();
    cmd.build();
    let serve = cmd.find_subcommand_mut("serve").unwrap();
    let help = serve.render_long_help().to_string();
    for needle in [
        "[default: 65464]",
        "[default: 3s]",
        "[default: 2ms]",
        "[default: auto]",
        "[default: text]",
        "[default: 200ms]",
        "[default: off]",
    ] {
        assert!(help.contains(needle), "{needle} not in\n{help}");
    }
}

#[test]
fn reading_a_missing_file_is_one_problem() {
    let a = args(&["--config", "/nonexistent/ringboot.toml"]);
    let e = load(&a).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(
        e.to_string()
            .starts_with("cannot read the config file /nonexistent/ringboot.toml: "),
        "{e}"
    );
}

#[test]
fn host_resolution_is_separate_and_pure() {
    let (mut c, _) = load_with(
        "root = \"/r\"\n[dhcp]\nmode = \"full\"\ninterface = \"eth1\"\nboot_file = \"x\"\nrange = \"10.0.0.100,10.0.0.150\"\n",
        &[],
    )
    .unwrap();
    // The configuration describes; nothing was looked up.
    assert!(c.dhcp.needs_addresses());
    assert_eq!(
        (c.dhcp.server_ip, c.dhcp.netmask, c.dhcp.router),
        (None, None, None)
    );
    let ifs = [IfAddr {
        name: "eth1".into(),
        index: 3,
        addr: Ipv4Addr::new(10, 0, 0, 1),
        netmask: Ipv4Addr::new(255, 255, 255, 0),
    }];
    c.dhcp.resolve_addresses(&ifs).unwrap();
    assert_eq!(c.dhcp.server_ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(c.dhcp.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
    assert_eq!(c.dhcp.router, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert!(!c.dhcp.needs_addresses());
}

#[test]
fn metrics_listen_and_service_settings() {
    let (c, _) = load_with("root = \"/r\"\n[metrics]\nlisten = \"9100\"\n", &[]).unwrap();
    assert_eq!(c.service.metrics, Some("127.0.0.1:9100".parse().unwrap()));
    let (c, _) = load_with(
        "root = \"/r\"",
        &[
            "--metrics",
            "0.0.0.0:9200",
            "--user",
            "nobody",
            "--drain-timeout",
            "3",
        ],
    )
    .unwrap();
    assert_eq!(c.service.metrics, Some("0.0.0.0:9200".parse().unwrap()));
    assert_eq!(c.service.user.as_deref(), Some("nobody"));
    assert_eq!(c.service.drain, Duration::from_secs(3));
    let e = load_with("root = \"/r\"\n[metrics]\nlisten = \"x\"\nport = 1\n", &[]).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e:?}");
    // Full mode needs an explicit interface; `*` means every one.
    let full = [
        "--dhcp",
        "full",
        "--dhcp-range",
        "10.9.0.10,10.9.0.20",
        "--boot-file",
        "a",
    ];
    let e = load_with("root = \"/r\"", &full).unwrap_err();
    assert!(e.to_string().contains("explicit interface"), "{e}");
    let mut all = full.to_vec();
    all.extend(["--dhcp-interface", "*"]);
    let (c, _) = load_with("root = \"/r\"", &all).unwrap();
    assert_eq!(c.dhcp.interface, None);
}

#[test]
fn rate_limits_from_the_file_and_the_command_line() {
    use crate::proto::cc::Rate;
    let c = config(
        "root = \"/srv\"\nrate_limit = [\"eth0=400M\", \"eth1=1G\"]\n",
        &[],
    );
    let got: Vec<(&str, Rate)> = c
        .rate_limits
        .iter()
        .map(|r| (r.iface.as_str(), r.rate))
        .collect();
    assert_eq!(
        got,
        [
            ("eth0", Rate::from_bits_per_sec(400_000_000)),
            ("eth1", Rate::from_bits_per_sec(1_000_000_000))
        ]
    );
    // A list of one as one string; the command line replaces the file's list.
    let c = config(
        "root = \"/srv\"\nrate_limit = \"eth0=400M\"\n",
        &["--rate-limit", "lo=100M", "--rate-limit", "eth2=2.5G"],
    );
    assert_eq!(c.rate_limits.len(), 2);
    assert_eq!(c.rate_limits[0].iface, "lo");
    assert!(config("root = \"/srv\"\n", &[]).rate_limits.is_empty());
    let e = refused("root = \"/srv\"\nrate_limit = [\"eth0=4X\"]\n", &[]);
    assert!(e[0].contains("is not a rate"), "{e:?}");
    let e = refused("root = \"/srv\"\nrate_limit = [\"eth0\"]\n", &[]);
    assert!(e[0].contains("IFACE=RATE"), "{e:?}");
    let e = refused(
        "root = \"/srv\"\nrate_limit = [\"eth0=1G\", \"eth0=2G\"]\n",
        &[],
    );
    assert!(e[0].contains("twice"), "{e:?}");
    assert!(usage_error(&["--root", "/srv", "--rate-limit", "eth0=fast"]).contains("rate"));
}
