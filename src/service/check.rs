//! `ringboot check`: what can be verified of a configuration before serving, on this host.
//!
//! Contract: [`host_problems`] takes a validated [`Config`] and looks at the host (read-only,
//! nothing bound or written): the root is a readable directory; the DHCP boot file and every
//! rule's boot file exist under the root as the server's case-insensitive lookup finds them
//! (URLs are not checked); every `--mtftp` file exists; the DHCP interface exists and has an
//! IPv4 address; the lease file's directory exists (and is the `--user`'s to write); the
//! `--user` and `--group` exist. Errors stop `serve` too; warnings are logged. One [`Problem`]
//! per line.

use crate::config::dhcp::DhcpMode;
use crate::config::{Config, Problem};
use crate::proto::tftp::packet::Mode;
use crate::store::{LookupError, Store};

/// What the host says about `config`: (errors, warnings).
pub fn host_problems(config: &Config) -> (Vec<Problem>, Vec<Problem>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let root = &config.root;
    let store = match Store::new(root, config.store.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(Problem::whole(format!(
                "cannot serve {}: {e}",
                root.display()
            )));
            None
        }
    };
    let file = |what: &str, name: &str, errors: &mut Vec<Problem>| {
        if name.contains("://") {
            return;
        }
        let Some(store) = &store else {
            return;
        };
        match store.lookup(name.as_bytes(), Mode::Octet) {
            Ok(_) => {}
            Err(LookupError::NotFound { .. }) => errors.push(Problem::whole(format!(
                "{what} {name:?} is not under {} (looked up as clients would, case-insensitively)",
                root.display()
            ))),
            Err(e) => errors.push(Problem::whole(format!("{what} {name:?}: {e}"))),
        }
    };
    let d = &config.dhcp;
    if d.mode != DhcpMode::Off {
        if let Some(b) = &d.boot_file {
            file("boot file", b, &mut errors);
        }
        for (i, r) in d.rules.iter().enumerate() {
            if let Some(b) = &r.boot_file {
                file(&format!("dhcp.rule[{i}] boot file"), b, &mut errors);
            }
        }
    }
    for m in &config.multicast.mtftp {
        file("--mtftp file", &m.file, &mut errors);
    }
    for r in &config.rate_limits {
        if crate::sys::iface::index_of(&r.iface).is_none() {
            errors.push(Problem::whole(format!(
                "--rate-limit {}={}: there is no interface {:?} (see `ip link`)",
                r.iface, r.rate, r.iface
            )));
        }
    }
    if d.mode != DhcpMode::Off {
        if let Some(name) = &d.interface {
            match crate::sys::iface::interfaces() {
                Ok(ifs) => {
                    if !ifs.iter().any(|i| &i.name == name) {
                        errors.push(Problem::whole(format!(
                            "DHCP interface {name:?} does not exist or has no IPv4 address (see `ip -4 addr`)"
                        )));
                    }
                }
                Err(e) => warnings.push(Problem::whole(format!(
                    "cannot list the network interfaces: {e}"
                ))),
            }
        }
        if d.mode == DhcpMode::Full {
            let lease = d.lease_path();
            if let Some(dir) = lease.parent().filter(|p| !p.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    errors.push(Problem::whole(format!(
                        "the lease file's directory {} does not exist: create it or give --dhcp-lease-file",
                        dir.display()
                    )));
                } else if let Some(user) = &config.service.user {
                    // Leases are saved by renaming a new file into the directory, after --user.
                    use std::os::unix::fs::MetadataExt;
                    if let (Ok((uid, _)), Ok(m)) =
                        (super::privileges::lookup_user(user), std::fs::metadata(dir))
                    {
                        if uid != 0 && m.uid() != uid && m.mode() & 0o002 == 0 {
                            errors.push(Problem::whole(format!(
                                "--user {user}: the lease directory {} is not writable by that user: `chown {user} {}` or give --dhcp-lease-file in a directory it owns",
                                dir.display(),
                                dir.display()
                            )));
                        }
                    }
                }
            }
        }
    }
    if let Some(user) = &config.service.user {
        if let Err(e) = super::privileges::lookup_user(user) {
            errors.push(Problem::whole(e.to_string()));
        }
        if let Some(group) = &config.service.group {
            if let Err(e) = super::privileges::lookup_group(group) {
                errors.push(Problem::whole(e.to_string()));
            }
        }
    }
    (errors, warnings)
}
