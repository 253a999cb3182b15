//! `generate_3d`'s `image_path`: a file on the MCP server's machine, read
//! as the server's user on behalf of whoever reaches the server. Over HTTP
//! that is anyone with the token, so there the argument is refused unless
//! the server was started with `--image-dir`, and then the path must
//! resolve inside that directory. On any transport only a regular file (a
//! symlink is followed only to one) of at most [`MAX_IMAGE_PATH_BYTES`] is
//! read: a FIFO would block the call forever, a device (`/dev/zero`) would
//! never end, a directory is no image.

use std::{
    io::Read,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use crate::mcp_error::{Code, ToolError};

/// The largest image file read: the largest image the node accepts at all
/// (by reference, [`orfeas_wire::v1::MAX_REF_IMAGE_BYTES`]).
pub const MAX_IMAGE_PATH_BYTES: u64 = orfeas_wire::v1::MAX_REF_IMAGE_BYTES;

/// Which `image_path`s this server reads.
#[derive(Clone, Debug)]
pub enum PathPolicy {
    /// Any regular file the server's user can read (stdio without `--image-dir`).
    Anywhere,
    /// Only regular files resolving inside this directory (canonical);
    /// a relative path is taken relative to it.
    Within(PathBuf),
    /// None (HTTP without `--image-dir`).
    Refused,
}

impl PathPolicy {
    /// The policy for a server on `http` (or stdio) with `image_dir`; the
    /// directory must exist, and is resolved once here.
    pub fn new(http: bool, image_dir: Option<&Path>) -> anyhow::Result<Self> {
        match image_dir {
            Some(dir) => {
                let canonical = dir.canonicalize().map_err(|e| anyhow::anyhow!("--image-dir {}: {e}", dir.display()))?;
                anyhow::ensure!(canonical.is_dir(), "--image-dir {} is not a directory", dir.display());
                Ok(Self::Within(canonical))
            }
            None if http => Ok(Self::Refused),
            None => Ok(Self::Anywhere),
        }
    }

    /// The bytes of the image file `path`, or why not.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, ToolError> {
        let resolved = match self {
            Self::Refused => {
                return Err(ToolError::new(
                    Code::PathNotAllowed,
                    format!("image_path {path:?}: this server (HTTP) reads no local files unless started with --image-dir; send image_base64 or an image_ref from upload_image"),
                ))
            }
            Self::Anywhere => PathBuf::from(path),
            Self::Within(dir) => {
                // Symlinks and `..` are resolved first, so only where the
                // path really leads counts.
                let canonical = dir.join(path).canonicalize().map_err(|e| unreadable(path, &e))?;
                if !canonical.starts_with(dir) {
                    return Err(ToolError::new(Code::PathNotAllowed, format!("image_path {path:?} resolves to {} outside the image directory {}", canonical.display(), dir.display())));
                }
                canonical
            }
        };
        // Non-blocking, so a FIFO put here after any check cannot hold the
        // open; what was opened is what is checked (fstat), then read with
        // a cap in case it grows.
        let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&resolved).map_err(|e| unreadable(path, &e))?;
        let meta = file.metadata().map_err(|e| unreadable(path, &e))?;
        if !meta.is_file() {
            let kind = kind_of(&meta.file_type());
            return Err(ToolError::new(Code::NotAFile, format!("image_path {path:?} is {kind}, not a regular file")));
        }
        if meta.len() > MAX_IMAGE_PATH_BYTES {
            return Err(too_large(path, meta.len()));
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        (&mut file).take(MAX_IMAGE_PATH_BYTES + 1).read_to_end(&mut data).map_err(|e| unreadable(path, &e))?;
        if data.len() as u64 > MAX_IMAGE_PATH_BYTES {
            return Err(too_large(path, data.len() as u64));
        }
        Ok(data)
    }
}

fn unreadable(path: &str, e: &std::io::Error) -> ToolError {
    ToolError::bad(format!("image_path {path:?} cannot be read: {e}"))
}

fn too_large(path: &str, bytes: u64) -> ToolError {
    ToolError::new(Code::TooLarge, format!("image_path {path:?} is {bytes} bytes, over the cap of {MAX_IMAGE_PATH_BYTES} bytes"))
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn code(r: Result<Vec<u8>, ToolError>) -> String {
        r.expect_err("refused").code
    }

    #[test]
    fn only_regular_files_are_read_and_symlinks_only_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.png");
        std::fs::write(&file, b"\x89PNG").unwrap();
        symlink(&file, dir.path().join("link.png")).unwrap();
        symlink(dir.path(), dir.path().join("link-dir")).unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let any = PathPolicy::Anywhere;
        assert_eq!(any.read(&p("a.png")).unwrap(), b"\x89PNG");
        assert_eq!(any.read(&p("link.png")).unwrap(), b"\x89PNG", "a symlink to a regular file");
        assert_eq!(code(any.read(&p(""))), "not_a_file", "a directory");
        assert_eq!(code(any.read(&p("link-dir"))), "not_a_file", "a symlink to a directory");
        assert_eq!(code(any.read(&p("fifo"))), "not_a_file", "a FIFO, refused without blocking");
        assert_eq!(code(any.read("/dev/zero")), "not_a_file", "a device");
        assert_eq!(code(any.read(&p("missing.png"))), "invalid_argument");
    }

    #[test]
    fn a_file_over_the_cap_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.png");
        // Sparse: no disk is spent on it.
        std::fs::File::create(&big).unwrap().set_len(MAX_IMAGE_PATH_BYTES + 1).unwrap();
        let error = PathPolicy::Anywhere.read(big.to_str().unwrap()).unwrap_err();
        assert_eq!((error.code.as_str(), error.status, error.retryable), ("too_large", 413, false));
        std::fs::File::create(&big).unwrap().set_len(MAX_IMAGE_PATH_BYTES).unwrap();
        assert_eq!(PathPolicy::Anywhere.read(big.to_str().unwrap()).unwrap().len() as u64, MAX_IMAGE_PATH_BYTES, "at the cap is fine");
    }

    #[test]
    fn an_image_dir_confines_paths_to_where_they_really_lead() {
        let root = tempfile::tempdir().unwrap();
        let images = root.path().join("images");
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join("in.png"), b"in").unwrap();
        std::fs::write(root.path().join("secret.png"), b"out").unwrap();
        symlink(root.path().join("secret.png"), images.join("escape.png")).unwrap();
        let within = PathPolicy::new(true, Some(&images)).unwrap();
        assert_eq!(within.read("in.png").unwrap(), b"in", "relative to the directory");
        assert_eq!(within.read(images.join("in.png").to_str().unwrap()).unwrap(), b"in", "absolute inside it");
        assert_eq!(code(within.read("../secret.png")), "path_not_allowed");
        assert_eq!(code(within.read(root.path().join("secret.png").to_str().unwrap())), "path_not_allowed");
        assert_eq!(code(within.read("escape.png")), "path_not_allowed", "a symlink leading out");
        assert_eq!(code(within.read(".")), "not_a_file", "the directory itself");
        assert!(PathPolicy::new(false, Some(&images.join("in.png"))).is_err(), "--image-dir must be a directory");
        assert!(PathPolicy::new(false, Some(&root.path().join("nope"))).is_err());
    }

    #[test]
    fn http_without_an_image_dir_reads_no_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"a").unwrap();
        let path = dir.path().join("a.png").to_str().unwrap().to_string();
        let error = PathPolicy::new(true, None).unwrap().read(&path).unwrap_err();
        assert_eq!((error.code.as_str(), error.status, error.retryable), ("path_not_allowed", 403, false));
        assert_eq!(PathPolicy::new(false, None).unwrap().read(&path).unwrap(), b"a", "stdio reads what its user can");
    }
}
