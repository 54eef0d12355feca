//! The served tree that the store's benchmarks time lookups in (`benches/store.rs` and
//! `examples/lookup_loop.rs` include it by `#[path]`): a small file, a 4 MiB file and a directory
//! of 20,000 entries (`big/File00000.cfg` ...).

/// A temporary folder with that tree, removed on drop.
pub fn store_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pxelinux.0"), vec![1u8; 40_000]).unwrap();
    std::fs::write(dir.path().join("boot.wim"), vec![2u8; 4 << 20]).unwrap();
    std::fs::create_dir(dir.path().join("big")).unwrap();
    for i in 0..20_000 {
        std::fs::write(dir.path().join(format!("big/File{i:05}.cfg")), b"x").unwrap();
    }
    dir
}
