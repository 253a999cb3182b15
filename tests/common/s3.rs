//! A real S3-compatible server for the tests: `moto_server` (PyPI
//! `moto[server]`, installed into the venv by `deploy/setup.sh`) on a free
//! loopback port, killed on drop.

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::free_port;

/// `moto_server`: next to `$ORFEAS_PYTHON`, else on PATH.
fn moto_bin() -> PathBuf {
    if let Some(python) = std::env::var_os("ORFEAS_PYTHON") {
        let bin = PathBuf::from(python).with_file_name("moto_server");
        if bin.is_file() {
            return bin;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join("moto_server").is_file() {
                return dir.join("moto_server");
            }
        }
    }
    panic!("moto_server not found: run deploy/setup.sh (installs moto[server] into the venv) or put it on PATH");
}

/// An S3 endpoint with one bucket.
pub struct S3Server {
    child: Child,
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub bucket: String,
    _log: tempfile::NamedTempFile,
}

impl S3Server {
    /// Start the server and create `bucket`.
    pub fn start(bucket: &str) -> Self {
        let port = free_port();
        let log = tempfile::Builder::new()
            .prefix("orfeas-test-s3-")
            .suffix(".log")
            .tempfile()
            .unwrap();
        let child = Command::new(moto_bin())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start moto_server");
        let server = Self {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
            _log: log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                if let Ok((status, _)) = request("PUT", port, &format!("/{bucket}")) {
                    assert_eq!(status, 200, "creating bucket {bucket}");
                    break;
                }
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Environment for a node storing results in `s3://<bucket>/<prefix>`.
    pub fn node_env(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            ("ORFEAS_STORE_URL", format!("s3://{}/{prefix}", self.bucket)),
            ("ORFEAS_STORE_ENDPOINT", self.endpoint.clone()),
            ("ORFEAS_STORE_ACCESS_KEY_ID", "orfeas-test".into()),
            (
                "ORFEAS_STORE_SECRET_ACCESS_KEY",
                "orfeas-test-secret".into(),
            ),
        ]
    }

    /// An object's bytes as the bucket's owner reads them, or None when it
    /// does not exist. (The server reads the credential of an Authorization
    /// header but does not check its signature.)
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        let auth = "Authorization: AWS4-HMAC-SHA256 Credential=orfeas-test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n";
        let (status, body) =
            request_with("GET", self.port, &format!("/{}/{key}", self.bucket), auth).unwrap();
        (status == 200).then_some(body)
    }

    /// The status of an anonymous GET (no credentials at all) of `key`.
    pub fn anonymous_status(&self, key: &str) -> u16 {
        request("GET", self.port, &format!("/{}/{key}", self.bucket))
            .unwrap()
            .0
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 request on loopback: (status, body).
pub fn request(method: &str, port: u16, path_and_query: &str) -> std::io::Result<(u16, Vec<u8>)> {
    request_with(method, port, path_and_query, "")
}

/// [`request`] with extra header lines (each ending in CRLF).
pub fn request_with(
    method: &str,
    port: u16,
    path_and_query: &str,
    headers: &str,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let mut body = response[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// GET an `http://127.0.0.1:<port>/...` URL as an agent would.
pub fn get_url(url: &str) -> (u16, Vec<u8>) {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .expect("a loopback http URL");
    let (port, path) = rest.split_at(rest.find('/').expect("a path"));
    request("GET", port.parse().unwrap(), path).unwrap()
}
