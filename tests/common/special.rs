//! Special files inside a served directory, watched for opens: a FIFO (`fifo`) and, where the
//! test may create one (root), a character device like /dev/null (`null`). A server must refuse
//! both without opening them: an open of a watchdog or a tty has side effects, and a FIFO's
//! blocks. Shared by the store's unit tests and the integration tests.

use std::ffi::CString;
use std::path::Path;

pub struct Specials {
    /// Whether the device node could be made (it needs root).
    pub have_dev: bool,
    /// inotify descriptor watching both for `IN_OPEN`.
    ino: libc::c_int,
}

impl Specials {
    /// Make `fifo` and `null` in `dir` and start watching them.
    pub fn make(dir: &Path) -> Specials {
        let c = |name: &str| CString::new(dir.join(name).into_os_string().into_encoded_bytes());
        let (fifo, dev) = (c("fifo").unwrap(), c("null").unwrap());
        // SAFETY: a valid path; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        // SAFETY: a valid path; the result is checked.
        let have_dev =
            unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0;
        // Watch for opens: an O_PATH open is not one; an open for reading is.
        // SAFETY: plain syscalls; results checked.
        let ino = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(ino >= 0);
        for p in [&fifo, &dev] {
            // SAFETY: a valid path (the device may be missing without root: then -1, ignored).
            unsafe { libc::inotify_add_watch(ino, p.as_ptr(), libc::IN_OPEN) };
        }
        Specials { have_dev, ino }
    }

    /// Panics when either file was opened since [`make`](Self::make) (`who`: by whom).
    pub fn assert_never_opened(self, who: &str) {
        let mut buf = [0u8; 512];
        // SAFETY: reads into a local buffer.
        let n = unsafe { libc::read(self.ino, buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: our descriptor.
        unsafe { libc::close(self.ino) };
        assert!(n <= 0, "{who} opened a FIFO or device inside the root");
    }
}
