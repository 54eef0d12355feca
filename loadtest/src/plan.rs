//! What each emulated machine does: firmware profiles, boot-sequence scenarios, and how each
//! download is checked.
//!
//! A *profile* is the request pattern of one firmware (../shared/PROTOCOL-NOTES.md): one or two
//! *phases*, each a fresh client port running [`ringboot::proto::tftp::client::Client`] with a fixed
//! [`ClientConfig`]. A *step* is one file a machine asks for, with its profile and whether the server is
//! expected to answer "file not found" (pxelinux's config probes). A *scenario* (TOML) is the list of
//! steps one machine takes; `--file` is a one-step scenario.

use anyhow::{anyhow, bail, Context, Result};
use ringboot::proto::tftp::client::{ClientConfig, ProbeEnd};
use ringboot::proto::tftp::{BlockSize, WindowSize};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A firmware's TFTP behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    /// BIOS PXE ROM: RRQ tsize -> OACK -> ERROR 0, then RRQ blksize 1456 from a new port, lockstep.
    Bios,
    /// EDK2: RRQ tsize+blksize 1468+windowsize 4 -> ERROR 8, then RRQ blksize 1468 windowsize 4 from a
    /// new port 2-5 ms later; strict OACK; 4 s x 6 retries.
    Uefi,
    /// iPXE: one RRQ blksize 1432 + tsize, lockstep.
    Ipxe,
    /// Whatever the custom options say.
    Custom,
}

impl ProfileKind {
    pub fn name(self) -> &'static str {
        match self {
            ProfileKind::Bios => "bios",
            ProfileKind::Uefi => "uefi",
            ProfileKind::Ipxe => "ipxe",
            ProfileKind::Custom => "custom",
        }
    }
}

/// Options of the `custom` profile (also accepted per scenario step, as keys of the step).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Custom {
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    pub tsize: bool,
    /// Client retransmission timeout in seconds (default 4).
    pub timeout: Option<f64>,
    /// Resends before giving up (default 6).
    pub retries: Option<u32>,
    /// RFC 2349 `timeout` option to request, in whole seconds.
    pub timeout_opt: Option<u8>,
    /// Run a size probe first that ends with this ERROR code (0 like BIOS ROMs, 8 like EDK2).
    pub probe: Option<u8>,
    /// Reject OACKs that grant what was not asked (EDK2). Default true.
    pub strict: Option<bool>,
}

impl Custom {
    fn is_empty(&self) -> bool {
        *self == Custom::default()
    }
}

/// One request from one fresh client port.
#[derive(Clone, Debug)]
pub struct Phase {
    pub cfg: ClientConfig,
    /// Pause before this phase's first packet, drawn uniformly from this range (milliseconds).
    pub gap_ms: (u64, u64),
}

impl Phase {
    /// `cfg` at once: the first phase.
    fn first(cfg: ClientConfig) -> Phase {
        Phase {
            cfg,
            gap_ms: (0, 0),
        }
    }
}

fn cfg(blksize: Option<u16>, windowsize: Option<u16>, tsize: bool, strict: bool) -> ClientConfig {
    ClientConfig {
        // Callers pass values in range (checked for 'custom').
        blksize: blksize.and_then(BlockSize::new),
        windowsize: windowsize.and_then(WindowSize::new),
        tsize,
        strict_oack: strict,
        retransmit: Duration::from_secs(4),
        retries: 6,
        ..ClientConfig::default()
    }
}

/// The phases a profile runs for one file.
pub fn phases(kind: ProfileKind, custom: &Custom) -> Result<Vec<Phase>> {
    if kind != ProfileKind::Custom && !custom.is_empty() {
        bail!(
            "options such as blksize/windowsize/tsize/timeout only apply to profile 'custom'; \
             profile '{}' reproduces its firmware exactly",
            kind.name()
        );
    }
    Ok(match kind {
        ProfileKind::Bios => probe_then(
            cfg(None, None, true, false),
            ProbeEnd::Error0,
            cfg(Some(1456), None, false, false),
            (1, 3),
        ),
        ProfileKind::Uefi => probe_then(
            cfg(Some(1468), Some(4), true, true),
            ProbeEnd::Error8,
            cfg(Some(1468), Some(4), false, true),
            (2, 5),
        ),
        ProfileKind::Ipxe => {
            let mut c = cfg(Some(1432), None, true, false);
            c.retransmit = Duration::from_secs(1);
            vec![Phase::first(c)]
        }
        ProfileKind::Custom => {
            if let Some(b) = custom.blksize {
                if BlockSize::new(b).is_none() {
                    bail!("blksize {b} is out of range 8..=65464 (RFC 2348)");
                }
            }
            if custom.windowsize == Some(0) {
                bail!("windowsize must be 1..=65535 (RFC 7440)");
            }
            let mut c = cfg(
                custom.blksize,
                custom.windowsize,
                custom.tsize,
                custom.strict.unwrap_or(true),
            );
            if let Some(t) = custom.timeout {
                if !(t > 0.0 && t <= 255.0) {
                    bail!("timeout {t} s is out of range (0, 255]");
                }
                c.retransmit = Duration::from_secs_f64(t);
            }
            if let Some(r) = custom.retries {
                c.retries = r;
            }
            c.timeout_option = custom.timeout_opt.map(|t| Duration::from_secs(t.into()));
            match custom.probe {
                None => vec![Phase::first(c)],
                Some(code) => {
                    let end = match code {
                        0 => ProbeEnd::Error0,
                        8 => ProbeEnd::Error8,
                        n => bail!("probe must end with ERROR 0 or 8, not {n}"),
                    };
                    probe_then(c.clone(), end, c, (2, 5))
                }
            }
        }
    })
}

/// What firmware does before it loads a file: a size probe (`probe`, asking tsize) that it ends
/// with ERROR `end`, then, after a pause drawn from `gap_ms`, the download `then`.
fn probe_then(
    mut probe: ClientConfig,
    end: ProbeEnd,
    then: ClientConfig,
    gap_ms: (u64, u64),
) -> Vec<Phase> {
    probe.tsize = true;
    probe.probe = Some(end);
    vec![Phase::first(probe), Phase { cfg: then, gap_ms }]
}

/// How a finished download is checked.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Byte for byte against this file (memory-mapped once, shared by every machine).
    Bytes(Arc<memmap2::Mmap>),
    /// SHA-256 of the whole download.
    Sha256([u8; 32]),
    /// Nothing to compare with (`--no-verify`): only the length against tsize.
    Unchecked,
}

/// One file one machine asks for.
#[derive(Clone, Debug)]
pub struct Step {
    /// Exactly as sent on the wire.
    pub filename: Vec<u8>,
    pub phases: Arc<[Phase]>,
    /// The server should answer ERROR 1 (file not found); anything else is a failure.
    pub miss: bool,
    pub expect: Expect,
}

/// A scenario file: the steps one machine takes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub name: Option<String>,
    /// Free text for people; not used.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    #[serde(rename = "step")]
    pub steps: Vec<StepSpec>,
}

/// One step as written in a scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Filename with placeholders: `<mac>` (`52-54-00-xx-xx-xx`), `<mac:>` (colons), `<uuid>`,
    /// `<ip>` (8 uppercase hex digits of the machine's address), `<ip:N>` (its first N hex digits),
    /// `<n>` (machine index).
    pub file: String,
    pub profile: ProfileKind,
    /// True when the server is expected to answer ERROR 1 (file not found).
    #[serde(default)]
    pub miss: bool,
    /// Options for profile `custom`, written as keys of the step (`blksize = 1468`). The step
    /// still refuses a key it does not know: serde reports what no field took.
    #[serde(flatten)]
    pub custom: Custom,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        let s: Scenario = toml::from_str(&text)
            .with_context(|| format!("scenario {} is not valid", path.display()))?;
        if s.steps.is_empty() {
            bail!("scenario {} has no [[step]]", path.display());
        }
        for st in &s.steps {
            phases(st.profile, &st.custom)
                .with_context(|| format!("scenario step '{}'", st.file))?;
        }
        Ok(s)
    }
}

/// Identity of one emulated machine, for placeholders.
pub struct Identity {
    pub index: usize,
    pub ip: Ipv4Addr,
}

impl Identity {
    pub fn mac(&self) -> [u8; 6] {
        let i = self.index as u32;
        [0x52, 0x54, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8]
    }

    /// Replace the placeholders in `template`.
    pub fn expand(&self, template: &str) -> Result<String> {
        let mut out = String::with_capacity(template.len() + 16);
        let mut rest = template;
        while let Some(start) = rest.find('<') {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('>')
                .ok_or_else(|| anyhow!("unclosed '<' in filename template '{template}'"))?;
            let key = &rest[start + 1..start + end];
            let m = self.mac();
            let hexip = format!("{:08X}", u32::from(self.ip));
            match key {
                "mac" => out.push_str(&hex_join(&m, "-")),
                "mac:" => out.push_str(&hex_join(&m, ":")),
                "uuid" => {
                    let i = self.index as u32;
                    out.push_str(&format!("4c4c4544-0000-1000-8000-52540{:07x}", i));
                }
                "ip" => out.push_str(&hexip),
                "n" => out.push_str(&self.index.to_string()),
                k if k.starts_with("ip:") => {
                    let n: usize = k[3..]
                        .parse()
                        .ok()
                        .filter(|n| (1..=8).contains(n))
                        .ok_or_else(|| anyhow!("<{k}>: N must be 1..=8"))?;
                    out.push_str(&hexip[..n]);
                }
                k => bail!("unknown placeholder <{k}> in '{template}' (known: mac, mac:, uuid, ip, ip:N, n)"),
            }
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn hex_join(b: &[u8], sep: &str) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Where expected contents come from, with lookups cached (each file is mapped once).
pub struct Checker {
    dir: Option<PathBuf>,
    manifest: Option<HashMap<String, [u8; 32]>>,
    cache: HashMap<String, Expect>,
}

/// The path a TFTP filename names relative to a root: backslashes to slashes, no leading slash.
fn normalize(name: &str) -> String {
    let s = name.replace('\\', "/");
    s.trim_start_matches('/').to_string()
}

impl Checker {
    pub fn new(dir: Option<PathBuf>, manifest: Option<&Path>) -> Result<Checker> {
        let manifest = match manifest {
            None => None,
            Some(p) => Some(parse_manifest(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read manifest {}", p.display()))?,
            )?),
        };
        Ok(Checker {
            dir,
            manifest,
            cache: HashMap::new(),
        })
    }

    /// What a download of `name` must equal. An error names the file that is missing.
    pub fn expect(&mut self, name: &str) -> Result<Expect> {
        if let Some(e) = self.cache.get(name) {
            return Ok(e.clone());
        }
        let rel = normalize(name);
        let e = if let Some(m) = &self.manifest {
            let d = m
                .get(&rel)
                .or_else(|| {
                    m.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&rel))
                        .map(|(_, v)| v)
                })
                .ok_or_else(|| {
                    anyhow!("manifest has no entry for '{name}' (looked up as '{rel}')")
                })?;
            Expect::Sha256(*d)
        } else if let Some(dir) = &self.dir {
            let path = find_path(dir, &rel).ok_or_else(|| {
                anyhow!(
                    "--verify: no file for '{name}' under {} (looked up as '{rel}', case-insensitively)",
                    dir.display()
                )
            })?;
            let f = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the verify tree must not change while the storm runs; a change would at worst
            // report a mismatch.
            let map = unsafe { memmap2::Mmap::map(&f) }
                .with_context(|| format!("cannot map {}", path.display()))?;
            Expect::Bytes(Arc::new(map))
        } else {
            Expect::Unchecked
        };
        self.cache.insert(name.to_string(), e.clone());
        Ok(e)
    }
}

/// `rel` under `dir`, matching each component exactly first and then case-insensitively.
fn find_path(dir: &Path, rel: &str) -> Option<PathBuf> {
    let exact = dir.join(rel);
    if exact.is_file() {
        return Some(exact);
    }
    let mut cur = dir.to_path_buf();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        let direct = cur.join(comp);
        if direct.exists() {
            cur = direct;
            continue;
        }
        let found = std::fs::read_dir(&cur)
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(comp))?;
        cur = found.path();
    }
    cur.is_file().then_some(cur)
}

/// `sha256sum` output: `<64 hex>  <name>` (a `*` before the name marks binary mode).
pub fn parse_manifest(text: &str) -> Result<HashMap<String, [u8; 32]>> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (hex, name) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| anyhow!("manifest line {}: expected '<sha256>  <name>'", n + 1))?;
        let name = name.trim_start().trim_start_matches('*');
        let mut d = [0u8; 32];
        if hex.len() != 64 {
            bail!(
                "manifest line {}: '{hex}' is not a SHA-256 (64 hex digits)",
                n + 1
            );
        }
        for (i, b) in d.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| anyhow!("manifest line {}: '{hex}' is not hex", n + 1))?;
        }
        out.insert(normalize(name), d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_match_the_firmware() {
        let u = phases(ProfileKind::Uefi, &Custom::default()).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].cfg.probe, Some(ProbeEnd::Error8));
        assert!(u[0].cfg.tsize && u[0].cfg.strict_oack);
        assert_eq!(
            (u[0].cfg.blksize, u[0].cfg.windowsize),
            (BlockSize::new(1468), WindowSize::new(4))
        );
        assert!(!u[1].cfg.tsize);
        assert_eq!(
            (u[1].cfg.blksize, u[1].cfg.windowsize),
            (BlockSize::new(1468), WindowSize::new(4))
        );
        assert_eq!(u[1].gap_ms, (2, 5));
        assert_eq!(u[1].cfg.retransmit, Duration::from_secs(4));
        assert_eq!(u[1].cfg.retries, 6);
        let b = phases(ProfileKind::Bios, &Custom::default()).unwrap();
        assert_eq!(b[0].cfg.probe, Some(ProbeEnd::Error0));
        assert_eq!((b[0].cfg.blksize, b[0].cfg.tsize), (None, true));
        assert_eq!(
            (b[1].cfg.blksize, b[1].cfg.windowsize),
            (BlockSize::new(1456), None)
        );
        let i = phases(ProfileKind::Ipxe, &Custom::default()).unwrap();
        assert_eq!(i.len(), 1);
        assert_eq!(
            (i[0].cfg.blksize, i[0].cfg.tsize),
            (BlockSize::new(1432), true)
        );
        let c = Custom {
            blksize: Some(8192),
            ..Custom::default()
        };
        assert!(phases(ProfileKind::Uefi, &c).is_err());
        assert_eq!(
            phases(ProfileKind::Custom, &c).unwrap()[0].cfg.blksize,
            BlockSize::new(8192)
        );
    }

    #[test]
    fn a_step_takes_the_custom_keys_and_refuses_others() {
        let s: Scenario = toml::from_str(
            "[[step]]\nfile = \"a\"\nprofile = \"custom\"\nblksize = 1468\ntsize = true\ntimeout = 2\n",
        )
        .unwrap();
        let want = Custom {
            blksize: Some(1468),
            tsize: true,
            timeout: Some(2.0),
            ..Custom::default()
        };
        assert_eq!(s.steps[0].custom, want);
        assert!(!s.steps[0].miss);
        let e = toml::from_str::<Scenario>(
            "[[step]]\nfile = \"a\"\nprofile = \"custom\"\nblksiz = 1468\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("blksiz"), "{e}");
    }

    #[test]
    fn placeholders_expand_per_machine() {
        let id = Identity {
            index: 0x0102,
            ip: Ipv4Addr::new(127, 1, 0, 5),
        };
        assert_eq!(
            id.expand("pxelinux.cfg/01-<mac>").unwrap(),
            "pxelinux.cfg/01-52-54-00-00-01-02"
        );
        assert_eq!(
            id.expand("pxelinux.cfg/<ip>").unwrap(),
            "pxelinux.cfg/7F010005"
        );
        assert_eq!(
            id.expand("pxelinux.cfg/<ip:3>").unwrap(),
            "pxelinux.cfg/7F0"
        );
        assert_eq!(id.expand("\\Boot\\BCD").unwrap(), "\\Boot\\BCD");
        assert!(id.expand("<nope>").is_err());
        assert!(id.expand("a<mac").is_err());
    }

    #[test]
    fn manifest_and_names() {
        let m = parse_manifest(&format!("{}  *Boot/BCD\n# c\n", "ab".repeat(32))).unwrap();
        assert_eq!(m["Boot/BCD"], [0xab; 32]);
        assert_eq!(normalize("\\Boot\\BCD"), "Boot/BCD");
        assert_eq!(normalize("/pxelinux.0"), "pxelinux.0");
        assert!(parse_manifest("xyz  a").is_err());
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let s = Scenario::load(&p).unwrap();
                let id = Identity {
                    index: 1,
                    ip: Ipv4Addr::new(127, 1, 0, 1),
                };
                for st in &s.steps {
                    id.expand(&st.file).unwrap();
                }
                n += 1;
            }
        }
        assert!(n >= 2);
    }
}
