//! Metrics and the live status page: what `--metrics ADDR:PORT` serves.
//!
//! Four sans-IO pieces that the engine drives (no thread, socket, file or clock of their own):
//! - [`registry`]: counters, gauges and histograms in per-thread shards (relaxed atomics on
//!   cache-line-aligned blocks, summed when scraped), encoded as Prometheus text (0.0.4).
//! - [`status`]: the status model (running transfers, throughput history, recent DHCP decisions,
//!   multicast sessions), fed by the services at most once a second, read when a page is asked.
//! - [`http`]: a strict HTTP/1.1 connection machine (`GET`/`HEAD`, bounded, keep-alive bounded).
//! - [`Site`]: the routes: `/` (the page), `/status.json`, `/metrics`, `/healthz`.
//!
//! ## How the engine drives them
//! - At start: one `Arc<Registry>` and one `Arc<Status>`; each TFTP worker takes a
//!   [`Recorder`] and a [`TransferPublisher`]; the control thread takes a [`Recorder`] for DHCP
//!   and multicast, and a [`McPublisher`].
//! - Hot path (workers): `recorder.transfer_started()`, `data_sent(blocks, bytes)`,
//!   `blocks_resent(n)`, `timeout()`, `first_block(elapsed)`, `transfer_ended(outcome,
//!   duration, bytes)`, `refused(reason)`: a load and a store each. On the worker's timer, when
//!   `publisher.due(now)`: `let mut b = publisher.begin(now); for t in transfers { b.push(&view) }`.
//! - The HTTP service: a listening TCP socket; per accepted stream a [`http::Connection`]
//!   driven as its module docs say, with [`Site`] as the handler; a cap on connections (32;
//!   more are closed); a 1 s timer calling [`Status::tick`]. [`serve`] is that driver (the one
//!   file here that does I/O): an engine service hosted by the control engine `ringboot-ctl`.
//!
//! ## Metrics
//!
//! Every label value is an enum of the crate (no per-client label). Single-label counters write
//! every value (zeros too); `ringboot_dhcp_messages_total` writes the combinations seen.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `ringboot_info` | gauge (1) | `version`, `backend`, `workers` | what runs |
//! | `ringboot_tftp_transfers_active` | gauge | | unicast transfers running (started - ended) |
//! | `ringboot_tftp_transfers_started_total` | counter | | unicast transfers accepted |
//! | `ringboot_tftp_transfers_ended_total` | counter | `outcome`: [`Outcome`] | transfers ended |
//! | `ringboot_tftp_requests_refused_total` | counter | `reason`: [`RefuseReason`] | requests answered with an ERROR |
//! | `ringboot_tftp_sent_bytes_total` | counter | | file bytes in DATA, resends included; a running transfer's counted once a second |
//! | `ringboot_tftp_blocks_sent_total` | counter | | DATA blocks, resends included |
//! | `ringboot_tftp_blocks_resent_total` | counter | | DATA blocks sent again |
//! | `ringboot_tftp_timeouts_total` | counter | | retransmission timeouts |
//! | `ringboot_tftp_transfer_duration_seconds` | histogram | | completed transfers, request to last ACK; 10 ms .. 600 s |
//! | `ringboot_tftp_first_block_seconds` | histogram | | request to the ACK of block 1; 1 ms .. 10 s |
//! | `ringboot_tftp_transfer_throughput_bytes_per_second` | histogram | | completed transfers, bytes / duration; 125 kB/s .. 5 GB/s |
//! | `ringboot_dhcp_messages_total` | counter | `type`: [`DhcpType`], `mode`: [`DhcpMode`], `arch`: [`ArchClass`] | DHCP messages received and sent |
//! | `ringboot_dhcp_ignored_total` | counter | `reason`: [`DhcpIgnored`] | DHCP messages not answered |
//! | `ringboot_dhcp_leases` | gauge | `state`: `in_use`, `free` | the full-mode pool |
//! | `ringboot_multicast_sessions` | gauge | `protocol`: [`McProtocol`] | sessions running |
//! | `ringboot_multicast_members` | gauge | `protocol` | members of those sessions |
//! | `ringboot_multicast_sent_bytes_total` | counter | `protocol` | file bytes sent to groups, resends included |
//! | `ringboot_multicast_refused_total` | counter | `reason`: [`McRefusal`] | multicast requests not served by multicast (RFC 2090: unicast instead; MTFTP: ERROR) |
//!
//! Label values: `outcome` = completed, probe, client_error, timeout, protocol_violation,
//! aborted, unanswered; TFTP `reason` = not_found, bad_name, forbidden, file_busy, read_error,
//! write_request, unsupported_mode, malformed, server_busy, client_busy, client_rate, no_socket;
//! `type` = discover, offer, request, decline, ack, nak, release, inform, other; `mode` = proxy,
//! full; `arch` = bios, efi_ia32, efi_x64 (option 93 = 7 or 9), efi_arm32, efi_arm64, http_ia32,
//! http_x64, http_arm32, http_arm64, other, none; DHCP `reason` = malformed, rate_limited,
//! not_pxe, not_for_us, pool_exhausted, other; `protocol` = pxe_mtftp, rfc2090; multicast
//! `reason` = disabled, block_size, pool_full, session_full, source_cap, saturated, not_found,
//! no_mtftp.
//!
//! The encoding is written here rather than through `prometheus-client`: that crate's metric
//! types are single shared atomics (every worker would write the same cache line) and its encoder
//! writes OpenMetrics (`# EOF`, `_created`, an `info` type the 0.0.4 parser rejects), so it would
//! only have been used through custom collectors for every family; the text format is a few
//! lines per family, and the tests parse it back.

pub mod http;
pub mod registry;
pub mod serve;
pub mod status;

pub use registry::{
    ArchClass, DhcpIgnored, DhcpMode, DhcpType, Info, McProtocol, McRefusal, Outcome, Recorder,
    RefuseReason, Registry, Totals,
};
pub use status::{
    DhcpView, McBatch, McPublisher, MemberView, SessionView, Snapshot, Status, TransferBatch,
    TransferPublisher, TransferView,
};

use http::{Handler, Request, Response, StatusCode};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

/// The status page: one HTML file, inline CSS and JS, no external assets.
pub const PAGE: &str = include_str!("status.html");

/// The content type of `/metrics` (Prometheus text format 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Headers of the page: it loads nothing from elsewhere and only fetches from its own origin.
const PAGE_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
];

/// The routes of the metrics/status listener (the [`Handler`] of its connections).
#[derive(Clone, Debug)]
pub struct Site {
    status: Arc<Status>,
}

impl Site {
    /// The site of `status` (and of its registry).
    pub fn new(status: Arc<Status>) -> Self {
        Site { status }
    }

    /// The response to `req` at `now`. `HEAD` gets the same headers (the connection drops the
    /// body).
    pub fn respond(&self, now: Instant, req: &Request) -> Response {
        match req.path.as_str() {
            "/" | "/index.html" => Response {
                status: StatusCode::Ok,
                content_type: "text/html; charset=utf-8",
                headers: PAGE_HEADERS,
                body: Cow::Borrowed(PAGE.as_bytes()),
            },
            "/status.json" => Response {
                status: StatusCode::Ok,
                content_type: "application/json",
                headers: &[],
                body: Cow::Owned(self.status.snapshot(now).to_json()),
            },
            "/metrics" => {
                let mut text = String::with_capacity(8 * 1024);
                self.status.registry().encode(&mut text);
                Response {
                    status: StatusCode::Ok,
                    content_type: METRICS_CONTENT_TYPE,
                    headers: &[],
                    body: Cow::Owned(text.into_bytes()),
                }
            }
            "/healthz" => Response::plain(StatusCode::Ok),
            _ => Response::plain(StatusCode::NotFound),
        }
    }
}

impl Handler for Site {
    fn respond(&mut self, now: Instant, req: &Request) -> Response {
        Site::respond(self, now, req)
    }
}

#[cfg(test)]
mod tests {
    use super::http::{Connection, Limits, Method};
    use super::*;

    fn site() -> Site {
        let registry = Arc::new(Registry::new(Info {
            version: "0.1.0".into(),
            backend: "epoll".into(),
            workers: 1,
        }));
        Site::new(Arc::new(Status::new(registry, Instant::now())))
    }

    fn get(site: &Site, path: &str) -> Response {
        site.respond(
            Instant::now(),
            &Request {
                method: Method::Get,
                path: path.into(),
            },
        )
    }

    #[test]
    fn routes() {
        let s = site();
        let page = get(&s, "/");
        assert_eq!(page.status, StatusCode::Ok);
        assert!(page.content_type.starts_with("text/html"));
        assert!(page
            .headers
            .iter()
            .any(|(k, _)| *k == "Content-Security-Policy"));
        let m = get(&s, "/metrics");
        assert_eq!(m.content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(std::str::from_utf8(&m.body)
            .unwrap()
            .contains("ringboot_info{version=\"0.1.0\",backend=\"epoll\",workers=\"1\"} 1"));
        let j = get(&s, "/status.json");
        assert_eq!(j.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&j.body).unwrap();
        assert_eq!(v["server"]["backend"], "epoll");
        assert_eq!(get(&s, "/healthz").status, StatusCode::Ok);
        assert_eq!(get(&s, "/nope").status, StatusCode::NotFound);
        assert_eq!(get(&s, "/metrics/").status, StatusCode::NotFound);
    }

    #[test]
    fn head_of_the_page_through_a_connection() {
        let mut s = site();
        let now = Instant::now();
        let mut c = Connection::new(now, Limits::default());
        c.handle_bytes(now, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        c.serve(now, &mut s);
        let out = c.poll_transmit().unwrap().to_vec();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", PAGE.len())));
        assert!(text.ends_with("\r\n\r\n"), "HEAD has no body");
    }

    /// The machines here hold no socket, file, thread, libc or clock (what `.ci/check-sans-io`
    /// asks of src/proto), outside their tests.
    #[test]
    fn sans_io() {
        for (file, text) in [
            ("http.rs", include_str!("http.rs")),
            ("registry.rs", include_str!("registry.rs")),
            ("status.rs", include_str!("status.rs")),
            ("mod.rs", include_str!("mod.rs")),
        ] {
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            for bad in [
                "UdpSocket",
                "TcpStream",
                "TcpListener",
                "std::fs",
                "std::thread",
                "libc",
                "socket2",
                "rustix",
                "io_uring",
                "memmap2",
                concat!("Instant::", "now"),
                concat!("SystemTime::", "now"),
                "std::process",
            ] {
                assert!(!code.contains(bad), "{file} names {bad}");
            }
        }
    }

    #[test]
    fn the_page_is_self_contained() {
        // No external assets: nothing is loaded from another origin, no build step.
        for bad in [
            "src=\"http",
            "href=\"http",
            "src='http",
            "@import",
            "<link",
            "url(http",
        ] {
            assert!(
                !PAGE.contains(bad),
                "the page refers to an external asset: {bad}"
            );
        }
        assert!(PAGE.contains("status.json"));
        // Data from the network is inserted as text, never as markup.
        assert!(!PAGE.contains("innerHTML"));
        assert!(!PAGE.contains("insertAdjacentHTML"));
        assert!(!PAGE.contains("document.write"));
    }
}
