//! The studio's edge: every request passes here before it reaches a job.
//! Host checks (a page on another name cannot reach this loopback port by
//! DNS rebinding), same-origin + CSRF token on every POST, upload type and
//! size checks before anything is queued, and the one error type whose
//! stable codes the page shows.

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use orfeas_wire::v1::{Format, JobParams};

/// Header the page sends its CSRF token in (a cross-site form cannot set
/// custom headers, and a cross-site script cannot read the token).
pub const CSRF_HEADER: &str = "x-orfeas-csrf";

/// Longest file name kept for display.
const MAX_NAME_CHARS: usize = 120;

/// Why a studio request was refused; `code()` is stable and shown on the page.
#[derive(Debug, thiserror::Error)]
pub enum StudioError {
    /// The Host header names something other than this server.
    #[error("host {0:?} is not this studio")]
    BadHost(String),
    /// A page shared on the network, asked without its access key.
    #[error("{0}")]
    Unauthorized(String),
    /// A POST from another origin, or without the page's token.
    #[error("{0}")]
    CrossSite(String),
    /// The upload is larger than the studio accepts.
    #[error("the upload of {got} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Bytes received (at least).
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// The upload is empty.
    #[error("the upload is empty")]
    Empty,
    /// The bytes are not a PNG, JPEG or WebP image.
    #[error("{0:?} is not a PNG, JPEG or WebP image")]
    UnsupportedType(String),
    /// A bad option (faces, size, formats, model).
    #[error("{0}")]
    Invalid(String),
    /// No such job in this session, or no such file of it.
    #[error("{0}")]
    NotFound(String),
    /// The deployment refused or failed (its own code is kept).
    #[error("{message}")]
    Node {
        /// The node's stable code.
        code: String,
        /// HTTP-like status from the node.
        status: u16,
        /// Its sentence.
        message: String,
    },
}

impl StudioError {
    /// Stable snake_case code.
    pub fn code(&self) -> &str {
        match self {
            Self::BadHost(_) => "bad_host",
            Self::Unauthorized(_) => "unauthorized",
            Self::CrossSite(_) => "cross_site",
            Self::TooLarge { .. } => "too_large",
            Self::Empty => "empty_upload",
            Self::UnsupportedType(_) => "unsupported_type",
            Self::Invalid(_) => "invalid_argument",
            Self::NotFound(_) => "not_found",
            Self::Node { code, .. } => code,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::CrossSite(_) => StatusCode::FORBIDDEN,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Empty | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Node { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
        }
    }
}

impl From<orfeas_wire::client::ClientError> for StudioError {
    fn from(e: orfeas_wire::client::ClientError) -> Self {
        use orfeas_wire::client::ClientError;
        match e {
            ClientError::Refused(f) => Self::Node { code: f.code.to_string(), status: f.status, message: f.error },
            ClientError::Timeout(_) | ClientError::Nats(_) => Self::Node { code: "unavailable".into(), status: 503, message: e.to_string() },
            ClientError::Unverified(_) => Self::Node { code: "unverified".into(), status: 502, message: e.to_string() },
        }
    }
}

impl IntoResponse for StudioError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}});
        json_response(self.status(), &body)
    }
}

/// A JSON body with the studio's headers.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The Content-Security-Policy of every response: only this origin's files
/// run, no inline script or style, nothing may frame the page.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self' blob: data:; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Add the security headers every response carries.
pub fn harden(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
}

/// The Host values this server answers to: its bound address, and
/// `localhost:<port>` when bound to loopback.
pub fn allowed_hosts(bound: std::net::SocketAddr) -> Vec<String> {
    let port = bound.port();
    let mut hosts = vec![bound.to_string()];
    if bound.ip().is_loopback() || bound.ip().is_unspecified() {
        hosts.extend([format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")]);
    }
    hosts
}

/// Refuse a request whose Host is not this server.
pub fn check_host(headers: &HeaderMap, allowed: &[String], unspecified: bool) -> Result<(), StudioError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    // Bound to 0.0.0.0 the operator chose to be reachable under any name.
    if unspecified || allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
        return Ok(());
    }
    Err(StudioError::BadHost(host.to_string()))
}

/// A state-changing request must come from this page: same origin (Origin
/// header when sent, Sec-Fetch-Site when sent) and the session's token.
pub fn check_post(headers: &HeaderMap, token: &str) -> Result<(), StudioError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if origin != format!("http://{host}") {
            return Err(StudioError::CrossSite(format!("origin {origin:?} is not this studio")));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err(StudioError::CrossSite(format!("a {site} request may not change anything")));
        }
    }
    let sent = headers.get(CSRF_HEADER).and_then(|t| t.to_str().ok()).unwrap_or("");
    if !constant_time_eq(sent.as_bytes(), token.as_bytes()) {
        return Err(StudioError::CrossSite("missing or wrong csrf token: reload the page".into()));
    }
    Ok(())
}

/// The cookie that carries the access key once the link was opened.
pub const ACCESS_COOKIE: &str = "orfeas_studio_key";

/// How a request to a studio with an access key gets in.
#[derive(Debug, PartialEq)]
pub enum Access {
    /// By the cookie or an `Authorization: Bearer` header.
    Granted,
    /// By `?key=` in the address: answer with the cookie and a redirect to
    /// the same path without the key (so it leaves the address bar).
    FromLink,
}

/// A studio shared beyond loopback takes requests only with its access key:
/// the `orfeas_studio_key` cookie, `Authorization: Bearer KEY`, or `?key=KEY`
/// (the link the studio prints). Host checks cannot protect a page that
/// answers to any name; an unguessable key that only the link carries can,
/// and a rebinding page under another name never holds the cookie.
pub fn check_access(headers: &HeaderMap, query: Option<&str>, key: &str) -> Result<Access, StudioError> {
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';'));
    let from_cookie = cookies.filter_map(|c| c.trim().split_once('=')).any(|(name, value)| name == ACCESS_COOKIE && constant_time_eq(value.as_bytes(), key.as_bytes()));
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if from_cookie || bearer.is_some_and(|b| constant_time_eq(b.trim().as_bytes(), key.as_bytes())) {
        return Ok(Access::Granted);
    }
    let linked = query.into_iter().flat_map(|q| q.split('&')).filter_map(|pair| pair.split_once('=')).any(|(name, value)| name == "key" && constant_time_eq(value.as_bytes(), key.as_bytes()));
    if linked {
        return Ok(Access::FromLink);
    }
    Err(StudioError::Unauthorized("this studio is shared on the network: open the link with ?key=… that `orfeas studio` printed, or send Authorization: Bearer KEY".into()))
}

/// The cookie header that admits this browser from now on.
pub fn access_cookie(key: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{ACCESS_COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict")).expect("the key is URL-safe text")
}

/// Whether an access key is valid in a link and a cookie as it is.
pub fn valid_access_key(key: &str) -> bool {
    key.len() >= 16 && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh unguessable token (two v4 UUIDs: 244 random bits).
pub fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The media type of an upload, from its bytes (never from its name or the
/// declared type, which the browser guesses from the extension).
pub fn sniff_image(bytes: &[u8], name: &str) -> Result<&'static str, StudioError> {
    match bytes {
        [] => Err(StudioError::Empty),
        [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, ..] => Ok("image/png"),
        [0xff, 0xd8, 0xff, ..] => Ok("image/jpeg"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Ok("image/webp"),
        _ => Err(StudioError::UnsupportedType(name.to_string())),
    }
}

/// A file name fit for display: no path, no control characters, bounded.
pub fn display_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base.chars().filter(|c| !c.is_control()).take(MAX_NAME_CHARS).collect();
    if clean.trim().is_empty() { "image".into() } else { clean }
}

/// Decode `a=1&b=x%20y` (values percent-decoded, `+` is a space).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// What a person asked for with one upload, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct JobOptions {
    /// Model name (one the deployment serves).
    pub model: String,
    /// Output formats, at least one.
    pub formats: Vec<Format>,
    /// Job parameters (bounds checked).
    pub params: JobParams,
    /// The size was not given and the studio applied its default.
    pub size_defaulted: bool,
}

/// Longest side given to STL and 3MF files when the person gave no size:
/// those formats are millimetres, and a model unit of 1 mm would print a
/// 2 mm object. (`orfeas generate` has no default size of its own.)
pub const DEFAULT_PRINT_SIZE_MM: f32 = 80.0;

/// Options from the query of an upload: `model`, `formats=glb,stl`,
/// `faces`, `size_mm`, `texture`, `colour`, `build_volume=x,y,z`.
pub fn job_options(query: &[(String, String)], models: &[String], default_model: &str) -> Result<JobOptions, StudioError> {
    let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty());
    let model = get("model").unwrap_or(default_model).to_string();
    if !models.is_empty() && !models.contains(&model) {
        return Err(StudioError::Invalid(format!("model {model:?} is not served here ({})", models.join(", "))));
    }
    let mut formats = Vec::new();
    for name in get("formats").unwrap_or("glb").split(',').filter(|n| !n.trim().is_empty()) {
        let format = Format::parse(name).ok_or_else(|| StudioError::Invalid(format!("unknown format {name:?} (glb, stl, obj, ply, 3mf)")))?;
        if !formats.contains(&format) {
            formats.push(format);
        }
    }
    // The viewer shows the GLB: it is always made.
    if !formats.contains(&Format::Glb) {
        formats.insert(0, Format::Glb);
    }
    let number = |name: &str| -> Result<Option<f64>, StudioError> {
        get(name).map(|v| v.parse::<f64>().map_err(|_| StudioError::Invalid(format!("{name} {v:?} is not a number")))).transpose()
    };
    let flag = |name: &str| matches!(get(name), Some("1" | "true" | "on" | "yes"));
    let faces = number("faces")?.map(|f| if f.fract() == 0.0 && f >= 0.0 && f <= u32::MAX as f64 { Ok(f as u32) } else { Err(StudioError::Invalid(format!("faces {f} is not a whole number"))) }).transpose()?;
    let mut size_mm = number("size_mm")?.map(|s| s as f32);
    let mut size_defaulted = false;
    if size_mm.is_none() && formats.iter().any(|f| matches!(f, Format::Stl | Format::ThreeMf)) {
        size_mm = Some(DEFAULT_PRINT_SIZE_MM);
        size_defaulted = true;
    }
    let build_volume_mm = match get("build_volume") {
        None => None,
        Some(text) => {
            let sides: Vec<f32> = text.split(',').map(|s| s.trim().parse::<f32>()).collect::<Result<_, _>>().map_err(|_| StudioError::Invalid(format!("build volume {text:?} is not x,y,z in mm")))?;
            Some(<[f32; 3]>::try_from(sides).map_err(|_| StudioError::Invalid(format!("build volume {text:?} is not x,y,z in mm")))?)
        }
    };
    let params = JobParams {
        target_faces: faces,
        size_mm,
        texture: flag("texture"),
        colour: get("colour").map(|_| flag("colour")),
        build_volume_mm,
        ..Default::default()
    };
    params.validate().map_err(StudioError::Invalid)?;
    Ok(JobOptions { model, formats, params, size_defaulted })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Vec<(String, String)> {
        parse_query(text)
    }

    #[test]
    fn options_default_glb_and_print_size_for_stl() {
        let models = vec!["null".to_string(), "inflate".to_string()];
        let o = job_options(&q("model=null&formats=stl"), &models, "inflate").unwrap();
        assert_eq!(o.formats, [Format::Glb, Format::Stl], "the viewer's GLB is always made");
        assert_eq!((o.params.size_mm, o.size_defaulted), (Some(DEFAULT_PRINT_SIZE_MM), true));
        let o = job_options(&q("formats=glb&size_mm=25.5&faces=5000&texture=1"), &models, "inflate").unwrap();
        assert_eq!((o.model.as_str(), o.params.size_mm, o.params.target_faces, o.params.texture), ("inflate", Some(25.5), Some(5000), true));
        assert!(!o.size_defaulted);
        assert_eq!(job_options(&q("model=nope"), &models, "inflate").unwrap_err().code(), "invalid_argument");
        assert!(job_options(&q("faces=10"), &models, "inflate").unwrap_err().to_string().contains("target_faces 10"));
        assert!(job_options(&q("size_mm=-3"), &models, "inflate").is_err());
        assert!(job_options(&q("formats=gif"), &models, "inflate").unwrap_err().to_string().contains("gif"));
        assert!(job_options(&q("build_volume=1,2"), &models, "inflate").is_err());
    }

    #[test]
    fn uploads_are_sniffed_by_their_bytes() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nrest", "a.png").unwrap(), "image/png");
        assert_eq!(sniff_image(b"\xff\xd8\xff\xe0", "a.jpg").unwrap(), "image/jpeg");
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 ", "a.webp").unwrap(), "image/webp");
        assert_eq!(sniff_image(b"<svg>", "evil.png").unwrap_err().code(), "unsupported_type");
        assert_eq!(sniff_image(b"", "a.png").unwrap_err().code(), "empty_upload");
    }

    #[test]
    fn query_and_names_are_decoded_safely() {
        assert_eq!(parse_query("a=x%20y&b=1+2&c=%zz&d"), [("a".into(), "x y".into()), ("b".into(), "1 2".into()), ("c".into(), "%zz".into()), ("d".into(), "".into())]);
        assert_eq!(parse_query("n=%2e%2e%2fetc"), [("n".into(), "../etc".into())]);
        assert_eq!(display_name("../../etc/passwd"), "passwd");
        assert_eq!(display_name("C:\\x\\mug.png"), "mug.png");
        assert_eq!(display_name("a\u{7}b"), "ab");
        assert_eq!(display_name(""), "image");
    }

    #[test]
    fn posts_need_same_origin_and_the_token() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8780"));
        assert_eq!(check_post(&h, "t0k").unwrap_err().code(), "cross_site");
        h.insert(CSRF_HEADER, HeaderValue::from_static("t0k"));
        check_post(&h, "t0k").unwrap();
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(check_post(&h, "t0k").unwrap_err().to_string().contains("evil.example"));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8780"));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_post(&h, "t0k").is_err());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        check_post(&h, "t0k").unwrap();
        let allowed = allowed_hosts("127.0.0.1:8780".parse().unwrap());
        check_host(&h, &allowed, false).unwrap();
        h.insert(header::HOST, HeaderValue::from_static("rebound.example:8780"));
        assert_eq!(check_host(&h, &allowed, false).unwrap_err().code(), "bad_host");
    }
    #[test]
    fn access_key_by_cookie_bearer_or_link_only() {
        let key = "k3y-0123456789abcdef";
        let mut headers = HeaderMap::new();
        assert_eq!(check_access(&headers, None, key).unwrap_err().code(), "unauthorized");
        assert_eq!(check_access(&headers, Some("key=wrong-0123456789abc"), key).unwrap_err().code(), "unauthorized");
        assert_eq!(check_access(&headers, Some("name=a&key=k3y-0123456789abcdef"), key).unwrap(), Access::FromLink);
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b; orfeas_studio_key=k3y-0123456789abcdeX"));
        assert!(check_access(&headers, None, key).is_err(), "a wrong cookie");
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b; orfeas_studio_key=k3y-0123456789abcdef"));
        assert_eq!(check_access(&headers, None, key).unwrap(), Access::Granted);
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k3y-0123456789abcdef"));
        assert_eq!(check_access(&bearer, None, key).unwrap(), Access::Granted);
        assert!(valid_access_key(key) && !valid_access_key("short") && !valid_access_key("has space 0123456789"));
        assert!(valid_access_key(&new_token()));
    }
}
