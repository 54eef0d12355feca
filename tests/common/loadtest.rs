//! The load tester for the namespace tests: its binary, built when stale, and its JSON report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// Newest modification time of the files under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut t = SystemTime::UNIX_EPOCH;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let m = if p.is_dir() {
                newest(&p)
            } else {
                e.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            };
            t = t.max(m);
        }
    }
    t
}

/// `ringboot-loadtest`: `RINGBOOT_LOADTEST_BIN`, else the one in this test's target directory
/// when it is newer than the sources, else built into `<target>/<own_target>` (a target
/// directory of its own: no wait on the lock of the cargo running us). The first call decides
/// for the whole test binary.
pub fn loadtest_bin(own_target: &str) -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("RINGBOOT_LOADTEST_BIN") {
            return PathBuf::from(p);
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let sources = newest(&repo.join("src")).max(newest(&repo.join("loadtest/src")));
        // <target>/<profile>/deps/<test>-<hash>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
        let fresh = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= sources)
        };
        let here = profile_dir.join("ringboot-loadtest");
        if fresh(&here) {
            return here;
        }
        let release = profile_dir.ends_with("release");
        let target = profile_dir.parent().unwrap().join(own_target);
        let built = target
            .join(if release { "release" } else { "debug" })
            .join("ringboot-loadtest");
        if fresh(&built) {
            return built;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "ringboot-loadtest"])
            .current_dir(repo)
            .env("CARGO_TARGET_DIR", &target);
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build -p ringboot-loadtest");
        assert!(st.success(), "cargo build -p ringboot-loadtest failed");
        built
    })
}

/// A number from the load tester's JSON: the first `"key": N` (its top-level fields come first).
pub fn json_num(text: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let i = text
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + pat.len();
    let v: String = text[i..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
        .collect();
    v.parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {text}"))
}
