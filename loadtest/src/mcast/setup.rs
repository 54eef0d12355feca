//! `--multicast`: the machines of a classroom planned per thread, the engines run, the report
//! and the multicast summary written.

use super::*;

/// `--multicast`: run the machines and report. Returns whether every machine completed (or
/// vanished on purpose).
pub fn run(a: &Args, mode: McMode) -> Result<bool> {
    let mc = &a.mc;
    for (n, v) in [
        ("loss", a.loss),
        ("ack-loss", a.ack_loss),
        ("vanish", a.vanish),
        ("join-late", mc.join_late),
    ] {
        crate::check_fraction(n, v)?;
    }
    if a.dup > 0.0 || a.reorder > 0.0 || a.delay_ms > 0.0 || a.slow_ms > 0.0 {
        bail!("--dup, --reorder, --delay-ms and --slow-ms are unicast only; --multicast takes --loss, --ack-loss, --vanish, --vanish-master and --join-late");
    }
    if a.scenario.is_some() || a.dhcp.is_some() {
        bail!("--multicast runs one --file per machine, without --scenario or --dhcp");
    }
    if a.clients == 0 || a.threads == 0 {
        bail!("--clients and --threads must be at least 1");
    }
    if !(a.deadline > 0.0 && a.deadline.is_finite()) {
        bail!("--deadline must be positive");
    }
    let file = a
        .file
        .clone()
        .ok_or_else(|| anyhow!("--multicast needs --file NAME"))?;
    if a.manifest.is_some() {
        bail!("--multicast checks with --verify DIR or not at all (--no-verify): blocks arrive out of order, so a --manifest SHA-256 cannot follow them");
    }
    if a.verify.is_none() && !a.no_verify {
        bail!(
            "say how downloads are checked: --verify DIR (same files as the server) or --no-verify"
        );
    }
    let server_arg = a
        .server
        .clone()
        .ok_or_else(|| anyhow!("--multicast needs --server ADDR:PORT"))?;
    let server: SocketAddr = server_arg
        .to_socket_addrs()
        .with_context(|| format!("--server '{server_arg}' is not ADDR:PORT"))?
        .find(|s| s.is_ipv4())
        .ok_or_else(|| anyhow!("--server '{server_arg}': multicast is IPv4 only"))?;
    let (open, pxe_group) = match mode {
        McMode::Rfc2090 => (server, None),
        McMode::Pxe => {
            let g = mc
                .mtftp_group
                .ok_or_else(|| anyhow!("--multicast pxe needs --mtftp-group GROUP:PORT (the server's --mtftp FILE@GROUP:PORT)"))?;
            if !g.ip().is_multicast() {
                bail!("--mtftp-group {g}: not a multicast address");
            }
            if a.blksize.is_some() {
                bail!("PXE MTFTP negotiates no options (512-byte blocks): drop --blksize");
            }
            let port = mc.mtftp_port.unwrap_or(server.port());
            (SocketAddr::new(server.ip(), port), Some(g))
        }
    };
    let expect = match Checker::new(a.verify.clone(), None)?.expect(&file)? {
        Expect::Bytes(f) => Some(f),
        _ => None,
    };
    let len = expect.as_ref().map(|f| f.len() as u64);
    if mc.join_late > 0.0 && len.is_none() {
        bail!("--join-late needs --verify DIR (to know when half the file has gone by)");
    }
    let late = (mc.join_late * a.clients as f64).round() as usize;
    if late >= a.clients && late > 0 {
        bail!(
            "--join-late {}: at least one machine must start on time",
            mc.join_late
        );
    }
    let range = a
        .source_ips
        .clone()
        .unwrap_or_else(|| "127.1.0.0/16".into());
    let (base, n_ips) = crate::parse_range(&range)?;
    let offsets = crate::arrivals(&crate::parse_arrival(&a.arrival)?, a.clients, a.seed);
    let mut per_thread: Vec<Vec<Spec>> = (0..a.threads).map(|_| Vec::new()).collect();
    for (i, start) in offsets.into_iter().enumerate() {
        per_thread[i % a.threads].push(Spec {
            index: i,
            ip: Ipv4Addr::from(base + (i as u32 % n_ips)),
            start,
            late: i >= a.clients - late,
        });
    }
    let defaults = McClientConfig::default();
    let blksize = match a.blksize {
        Some(b) => Some(
            BlockSize::new(b)
                .ok_or_else(|| anyhow!("--blksize {b} is out of range 8..=65464 (RFC 2348)"))?,
        ),
        None => None,
    };
    let cfg = McClientConfig {
        blksize,
        tsize: true,
        timeout: a
            .timeout
            .map(Duration::from_secs_f64)
            .unwrap_or(defaults.timeout),
        retries: a.retries.unwrap_or(defaults.retries),
        listen_timeout: Duration::from_millis(mc.mtftp_listen_ms),
        reopen_delay: Duration::from_millis(mc.mtftp_reopen_ms),
    };
    // Group sockets per thread, unicast sockets per machine.
    crate::raise_fd_limit(a.clients as u64 * 2 + 256);

    let start = crate::Start::now();
    let t0 = start.t0;
    let sh = Arc::new(Shared {
        mode,
        open,
        pxe_group,
        filename: file.clone().into_bytes(),
        cfg,
        expect,
        len,
        loss: a.loss,
        ack_loss: a.ack_loss,
        vanish: a.vanish,
        vanish_master: mc.vanish_master,
        sockets: mc.group_sockets,
        seed: a.seed,
        t0,
        deadline: t0 + Duration::from_secs_f64(a.deadline),
        live: Live::default(),
        half: AtomicBool::new(false),
        master_gone: AtomicBool::new(false),
    });
    let body = {
        let sh = sh.clone();
        move |specs| run_thread(sh.clone(), specs)
    };
    let handles = drive::spawn("mcast", per_thread, body);

    let mut samples = crate::watch(&handles, &sh.live, t0, a.clients, a.quiet, None);
    let live = &sh.live;
    let mut results = Vec::with_capacity(a.clients);
    let mut stats = ThreadStats::default();
    for (r, s) in drive::join(handles)? {
        results.extend(r);
        stats.group_datagrams += s.group_datagrams;
        stats.group_deliveries += s.group_deliveries;
        stats.group_sockets += s.group_sockets;
        stats.master_turns += s.master_turns;
        stats.opens += s.opens;
        for g in s.groups {
            if !stats.groups.contains(&g) {
                stats.groups.push(g);
            }
        }
    }
    let run = report::Run {
        server: open.to_string(),
        profile: format!("multicast-{}", mode.name()),
        file: Some(file),
        scenario: None,
    };
    let (rep, _) = crate::conclude(a, &start, run, &mut results, &mut samples, live);
    let groups: Vec<String> = stats.groups.iter().map(|g| g.to_string()).collect();
    let sockets = match mc.group_sockets {
        GroupSockets::Shared => "shared",
        GroupSockets::PerMachine => "per-machine",
    };
    crate::summary(a, &rep.table());
    {
        let line = format!(
            "  multicast    {} group {}: {} group datagrams received on {} {} socket{}, {} handed to machines; {} master turns, {} opens, {} late\n",
            mode.name(),
            if groups.is_empty() { "-".to_string() } else { groups.join(" ") },
            stats.group_datagrams,
            stats.group_sockets,
            sockets,
            if stats.group_sockets == 1 { "" } else { "s" },
            stats.group_deliveries,
            stats.master_turns,
            stats.opens,
            late
        );
        crate::summary(a, &line);
    }
    if let Some(p) = &a.json {
        let mut v = serde_json::to_value(&rep)?;
        v["multicast"] = serde_json::json!({
            "protocol": mode.name(),
            "groups": groups,
            "group_sockets": sockets,
            "group_sockets_opened": stats.group_sockets,
            "group_datagrams": stats.group_datagrams,
            "group_deliveries": stats.group_deliveries,
            "master_turns": stats.master_turns,
            "opens": stats.opens,
            "late_joiners": late,
            "vanish_master": mc.vanish_master,
        });
        report::write_text(p, &(serde_json::to_string_pretty(&v)? + "\n"))?;
    }
    if let Some(d) = &a.hgrm {
        rep.write_hgrm(d)?;
    }
    if let Some(p) = &a.plot {
        rep.write_plot(p)?;
    }
    Ok(rep.failed == 0)
}
