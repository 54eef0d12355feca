//! The status page over real TCP, and rendered by a real browser.
//!
//! The server is the example `status_page` (a fake, changing boot storm on a free loopback port,
//! driving the sans-IO HTTP connection from a blocking test driver). The browser test runs
//! Debian's `chromium` headless when it is installed (`apt-get install chromium`) and says it
//! skipped otherwise. With `RINGBOOT_SCREENSHOT=path.png` it also keeps the screenshot there
//! (docs/status-page.png is made this way, with `RINGBOOT_SCREENSHOT_HEIGHT=1700` so that every
//! section is in the picture).

#[path = "../examples/status_page.rs"]
mod demo;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Send `request` bytes, read until the server closes, return what came back.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let raw = exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    (head.to_owned(), body.to_owned())
}

#[test]
fn page_json_and_metrics_over_tcp() {
    let d = demo::start(0, false).unwrap();
    let (head, body) = get(d.addr, "/");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/html; charset=utf-8"));
    assert!(head.contains("Content-Security-Policy: default-src 'none'"));
    assert!(body.contains("<title>ringboot status</title>"));

    let (head, body) = get(d.addr, "/status.json");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["server"]["backend"], "io_uring");
    assert!(v["transfers"]["active"].as_u64().unwrap() > 0);
    assert!(!v["transfers"]["listed"].as_array().unwrap().is_empty());
    assert!(v["throughput"]["tftp"].as_array().unwrap().len() >= 290);
    assert!(!v["dhcp"].as_array().unwrap().is_empty());
    assert_eq!(v["multicast"][0]["members"], 12);

    let (head, body) = get(d.addr, "/metrics");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"));
    for name in [
        "ringboot_info{",
        "ringboot_tftp_transfers_active ",
        "ringboot_tftp_transfers_ended_total{outcome=\"completed\"} ",
        "ringboot_tftp_transfer_duration_seconds_bucket{le=\"+Inf\"} ",
        "ringboot_dhcp_messages_total{type=\"offer\",mode=\"full\",arch=\"efi_x64\"} ",
        "ringboot_multicast_members{protocol=\"pxe_mtftp\"} 12",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }

    let (head, _) = get(d.addr, "/nothing-here");
    assert!(head.starts_with("HTTP/1.1 404 Not Found"), "{head}");
    let raw = exchange(d.addr, b"POST / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 405 Method Not Allowed"), "{raw}");
    assert!(raw.contains("Allow: GET, HEAD"));
    // Two pipelined requests on one connection, answered in order.
    let raw = exchange(
        d.addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let ok = raw.find("HTTP/1.1 200 OK").unwrap();
    let nf = raw.find("HTTP/1.1 404 Not Found").unwrap();
    assert!(ok < nf, "{raw}");
    d.stop();
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(move |dir| dir.join(name))
        })
        .find(|p| p.is_file())
}

/// Run headless chromium on `url` with `extra` flags; its stdout, or a failure after 120 s.
fn run_chromium(browser: &Path, url: &str, size: (u32, u32), extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

#[test]
fn page_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        eprintln!("skipped: no chromium (apt-get install chromium)");
        return;
    };
    // The DOM after the page's script ran: it fetched status.json and built the tables and graph.
    // This server also has a transfer and a DHCP decision with markup in their names.
    let d = demo::start(0, true).unwrap();
    let url = format!("http://{}/", d.addr);
    let dom = run_chromium(&browser, &url, (1280, 900), &["--dump-dom".to_owned()]);
    d.stop();
    for expect in [
        "live, updated",             // the fetch succeeded
        "io_uring",                  // server line
        "boot/x64/sources/boot.wim", // a transfer or the session
        "class=\"bar\"",             // a progress bar
        "class=\"total\"",           // the throughput line
        "PXE MTFTP",                 // the multicast session
        "52:54:00:",                 // a DHCP decision's MAC
        "Booting now",
    ] {
        assert!(
            dom.contains(expect),
            "{expect} missing from the rendered page"
        );
    }
    assert!(
        !dom.contains("class=\"banner show\""),
        "the page shows its error banner"
    );
    // Names from the network are text: escaped in the DOM, never elements, scripts not run.
    assert!(
        dom.contains("&lt;img src=x onerror="),
        "the hostile file name is not shown"
    );
    assert!(
        dom.contains("&lt;script&gt;document.title"),
        "the hostile vendor class is not shown"
    );
    assert!(!dom.contains("<img"), "a file name became markup");
    assert!(!dom.contains("pwned</title>"), "a file name ran as script");
    assert!(
        !dom.contains('\u{1b}'),
        "a control character reached the page"
    );

    // The picture, of a storm without the hostile names.
    let d = demo::start(0, false).unwrap();
    let url = format!("http://{}/", d.addr);

    let shot = std::env::var_os("RINGBOOT_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("ringboot-status-{}.png", std::process::id()))
        });
    let _ = std::fs::remove_file(&shot);
    // RINGBOOT_SCREENSHOT_HEIGHT: a taller window shows every section in one picture.
    let height = std::env::var("RINGBOOT_SCREENSHOT_HEIGHT")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(900);
    run_chromium(
        &browser,
        &url,
        (1280, height),
        &[format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).expect("chromium wrote a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(
        png.len() > 20_000,
        "a nearly blank screenshot ({} bytes)",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
    if std::env::var_os("RINGBOOT_SCREENSHOT").is_none() {
        let _ = std::fs::remove_file(&shot);
    }
    d.stop();
}
