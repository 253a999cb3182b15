//! The studio's HTTP surface: the page and its files, the vendored three.js
//! modules, and a small JSON + Server-Sent-Events API the page drives.
//! Every response passes [`guard`] (Host check, security headers); every
//! POST also passes [`safety::check_post`].

use std::{convert::Infallible, path::Path as FsPath, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri},
    middleware::{self, Next},
    response::{
        sse::{Event as SseEvent, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Router,
};
use futures::Stream;
use orfeas_wire::v1::{ImageInput, SubmitJob};
use serde_json::json;
use uuid::Uuid;

use super::{
    jobs::{self, JobView},
    safety::{self, json_response, StudioError},
    Studio,
};

const INDEX: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const VIEWER_JS: &str = include_str!("page/viewer.js");
const STYLE: &str = include_str!("page/style.css");
const ICON: &str = include_str!("page/icon.svg");

/// How long a signed request to the deployment may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type Shared = Arc<Studio>;

/// All routes, behind the guard.
pub fn router(studio: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(|| async { text("text/javascript; charset=utf-8", APP_JS) }))
        .route("/viewer.js", get(|| async { text("text/javascript; charset=utf-8", VIEWER_JS) }))
        .route("/style.css", get(|| async { text("text/css; charset=utf-8", STYLE) }))
        .route("/favicon.ico", get(|| async { text("image/svg+xml", ICON) }))
        .route("/icon.svg", get(|| async { text("image/svg+xml", ICON) }))
        .route("/vendor/three/{*path}", get(vendor))
        .route("/api/config", get(config))
        .route("/api/jobs", get(list).post(upload))
        .route("/api/events", get(events))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/files/{name}", get(download))
        .route("/api/jobs/{id}/previews/{view}", get(preview))
        .layer(middleware::from_fn_with_state(studio.clone(), guard))
        .with_state(studio)
}

/// Host check on everything, token and origin checks on POSTs, and the
/// security headers on every answer (errors included).
async fn guard(State(studio): State<Shared>, request: Request, next: Next) -> Response {
    let reading = request.method() == Method::GET || request.method() == Method::HEAD;
    let checked = safety::check_host(request.headers(), &studio.hosts, studio.open_to_any_host)
        .and_then(|()| match &studio.access_key {
            Some(key) => safety::check_access(request.headers(), request.uri().query(), key).map(Some),
            None => Ok(None),
        })
        .and_then(|access| if reading { Ok(access) } else { safety::check_post(request.headers(), &studio.token).map(|()| access) });
    let mut response = match checked {
        // The link's key becomes a cookie, and the address loses it.
        Ok(Some(safety::Access::FromLink)) if reading => {
            let key = studio.access_key.as_deref().unwrap_or_default();
            let mut redirect = (StatusCode::SEE_OTHER, [(header::LOCATION, without_key(request.uri()))]).into_response();
            redirect.headers_mut().insert(header::SET_COOKIE, safety::access_cookie(key));
            redirect
        }
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    };
    safety::harden(response.headers_mut());
    response
}

/// The request's path and query without its `key=` parameter.
fn without_key(uri: &Uri) -> String {
    let rest: Vec<&str> = uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty() && !p.starts_with("key=")).collect();
    match rest.is_empty() {
        true => uri.path().to_string(),
        false => format!("{}?{}", uri.path(), rest.join("&")),
    }
}

fn text(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn index(State(studio): State<Shared>) -> Response {
    let page = INDEX
        .replace("{{csrf}}", &studio.token)
        .replace("{{default_size}}", &format!("{}", safety::DEFAULT_PRINT_SIZE_MM))
        .replace("{{max_size}}", &human_bytes(studio.max_upload_bytes));
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], page).into_response()
}

/// `16 MB`, `64 KB`: the upload limit as the page says it.
fn human_bytes(n: usize) -> String {
    if n >= 1024 * 1024 { format!("{:.0} MB", n as f64 / (1024.0 * 1024.0)) } else { format!("{:.0} KB", n as f64 / 1024.0) }
}

/// A three.js module from the vendored package. Only `.js` files under
/// `build/` and `examples/jsm/`, resolved inside the package folder; bare
/// `'three'` imports are pointed at the served build (an import map would
/// be an inline script, which the CSP forbids).
async fn vendor(State(studio): State<Shared>, Path(path): Path<String>) -> Result<Response, StudioError> {
    let missing = || StudioError::NotFound(format!("no viewer file {path:?}"));
    let root = studio.assets.as_ref().ok_or_else(|| StudioError::NotFound("three.js is not installed here: run deploy/setup.sh --studio".into()))?;
    let plain = path.split('/').all(|part| !part.is_empty() && part != "." && part != ".." && part.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
    if !plain || !path.ends_with(".js") || !(path.starts_with("build/") || path.starts_with("examples/jsm/")) {
        return Err(missing());
    }
    let root = root.canonicalize().map_err(|_| missing())?;
    let file = root.join(&path).canonicalize().map_err(|_| missing())?;
    if !file.starts_with(&root) || !file.is_file() {
        return Err(missing());
    }
    let source = tokio::fs::read_to_string(&file).await.map_err(|_| missing())?;
    let source = source.replace("from 'three';", "from '/vendor/three/build/three.module.js';").replace("from \"three\";", "from '/vendor/three/build/three.module.js';");
    Ok(([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], source).into_response())
}

async fn models(studio: &Studio) -> Option<orfeas_wire::v1::ModelList> {
    let request = orfeas_wire::to_cbor(&orfeas_wire::v1::ListModels {});
    let answer = tokio::time::timeout(Duration::from_secs(5), studio.nats.request(orfeas_wire::subjects::MODELS_LIST, request.into())).await.ok()?.ok()?;
    orfeas_wire::from_cbor(&answer.payload).ok()
}

async fn config(State(studio): State<Shared>) -> Response {
    let list = models(&studio).await;
    let models: Vec<_> = list.iter().flat_map(|l| &l.models).map(|m| json!({"name": m.name, "description": m.description})).collect();
    json_response(
        StatusCode::OK,
        &json!({
            "agent": studio.agent,
            "models": models,
            "default_model": studio.default_model,
            "formats": orfeas_wire::v1::Format::ALL.iter().map(|f| f.extension()).collect::<Vec<_>>(),
            "default_print_size_mm": safety::DEFAULT_PRINT_SIZE_MM,
            "default_build_volume_mm": [256, 256, 256],
            "max_upload_bytes": studio.max_upload_bytes,
            "viewer": studio.assets.is_some(),
        }),
    )
}

async fn list(State(studio): State<Shared>) -> Response {
    json_response(StatusCode::OK, &json!({"jobs": studio.session.all().await}))
}

/// One image per request: the body is the file's bytes, the options are
/// the query (`name`, `model`, `formats`, `faces`, `size_mm`, `texture`,
/// `build_volume`). Size, type and options are checked before anything
/// is queued.
async fn upload(State(studio): State<Shared>, headers: HeaderMap, uri: Uri, body: Body) -> Result<Response, StudioError> {
    let limit = studio.max_upload_bytes;
    if let Some(declared) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()) {
        if declared > limit {
            return Err(StudioError::TooLarge { got: declared, limit });
        }
    }
    let query = safety::parse_query(uri.query().unwrap_or(""));
    let name = safety::display_name(query.iter().find(|(k, _)| k == "name").map(|(_, v)| v.as_str()).unwrap_or("image"));
    // A chunked body has no length up front: stop reading one byte past the limit.
    let bytes = axum::body::to_bytes(body, limit + 1).await.map_err(|_| StudioError::TooLarge { got: limit + 1, limit })?;
    if bytes.len() > limit {
        return Err(StudioError::TooLarge { got: bytes.len(), limit });
    }
    let media_type = safety::sniff_image(&bytes, &name)?;
    let served: Vec<String> = models(&studio).await.map(|l| l.models.into_iter().map(|m| m.name).collect()).unwrap_or_default();
    let options = safety::job_options(&query, &served, &studio.default_model)?;
    let mut job = SubmitJob {
        job_id: Uuid::now_v7(),
        model: options.model.clone(),
        image: ImageInput::Inline { media_type: media_type.into(), data: bytes.to_vec() },
        formats: options.formats.clone(),
        params: options.params.clone(),
    };
    let client = &studio.client;
    crate::agent::upload_if(client, &mut job, false).await.map_err(|e| StudioError::Node { code: "unavailable".into(), status: 503, message: format!("{e:#}") })?;
    let view = JobView::new(
        job.job_id,
        name,
        &job.model,
        &job.formats,
        &job.params,
        options.size_defaulted,
    );
    let events = client.submit(&job).await?;
    studio.session.insert(view.clone()).await;
    tokio::spawn(jobs::follow(studio.session.clone(), studio.follower_client(), events, job.job_id, studio.job_timeout));
    Ok(json_response(StatusCode::ACCEPTED, &json!({"job": view})))
}

fn job_id(text: &str) -> Result<Uuid, StudioError> {
    Uuid::parse_str(text).map_err(|_| StudioError::NotFound(format!("{text:?} is not a job id")))
}

async fn session_job(studio: &Studio, id: &str) -> Result<JobView, StudioError> {
    let id = job_id(id)?;
    studio.session.get(&id).await.ok_or_else(|| StudioError::NotFound(format!("job {id} is not one of this session's")))
}

async fn cancel(State(studio): State<Shared>, Path(id): Path<String>) -> Result<Response, StudioError> {
    let view = session_job(&studio, &id).await?;
    let status = studio.client.cancel(&view.id, REQUEST_TIMEOUT).await?;
    let canceled = status.state == "canceled";
    studio
        .session
        .update(&view.id, |v| {
            v.cancel_requested = true;
            if canceled {
                v.state = "canceled".into();
                v.error = Some(json!({"code": "canceled", "message": "canceled from the studio"}));
            }
        })
        .await;
    Ok(json_response(StatusCode::OK, &json!({"job_id": view.id, "state": status.state, "cancel_requested": status.cancel_requested})))
}

/// A result file by its format (`glb`) or part name (`model.mtl`): only
/// names the job's own manifest lists, fetched over NATS and checked
/// against its SHA-256, so no request names a path.
async fn download(State(studio): State<Shared>, Path((id, name)): Path<(String, String)>) -> Result<Response, StudioError> {
    let view = session_job(&studio, &id).await?;
    let file = view
        .files
        .iter()
        .find(|f| f.url.rsplit('/').next() == Some(name.as_str()))
        .ok_or_else(|| StudioError::NotFound(format!("job {} has no file {name:?}", view.id)))?;
    let bytes = studio.client.fetch_file(&view.id, &file.location, Some(&file.sha256), REQUEST_TIMEOUT).await?;
    let content_type = match file.format.as_str() {
        "glb" => "model/gltf-binary",
        "stl" => "model/stl",
        "obj" => "model/obj",
        "3mf" => "model/3mf",
        "png" => "image/png",
        _ => "application/octet-stream",
    };
    let disposition = format!("attachment; filename=\"{}\"", attachment_name(&file.name));
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// A file name safe inside a quoted header value.
fn attachment_name(name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || "._- ()".contains(c) { c } else { '_' }).collect();
    let clean = clean.trim_start_matches('.').to_string();
    if FsPath::new(&clean).extension().is_none() { format!("{clean}.bin") } else { clean }
}

async fn preview(State(studio): State<Shared>, Path((id, view_name)): Path<(String, String)>) -> Result<Response, StudioError> {
    let view = session_job(&studio, &id).await?;
    let preview = view.previews.iter().find(|p| p.view == view_name).ok_or_else(|| StudioError::NotFound(format!("job {} has no {view_name:?} preview", view.id)))?;
    let bytes = studio.client.fetch_file(&view.id, &preview.location, preview.sha256.as_deref(), REQUEST_TIMEOUT).await?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "private, max-age=3600")], bytes).into_response())
}

/// The live feed: a `snapshot` of every job, then one `job` event per
/// change; a page that fell behind gets a fresh snapshot.
async fn events(State(studio): State<Shared>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let changes = studio.session.subscribe();
    let first = snapshot(&studio).await;
    let closing = studio.closing.clone();
    let state = (Some(first), changes, closing, studio);
    let stream = futures::stream::unfold(state, |(first, mut changes, mut closing, studio)| async move {
        if let Some(first) = first {
            return Some((Ok(first), (None, changes, closing, studio)));
        }
        if *closing.borrow() {
            return None;
        }
        let event = tokio::select! {
            change = changes.recv() => match change {
                Ok(view) => SseEvent::default().event("job").data(serde_json::to_string(&view).unwrap_or_default()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => snapshot(&studio).await,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            },
            _ = closing.changed() => return None,
        };
        Some((Ok(event), (None, changes, closing, studio)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn snapshot(studio: &Studio) -> SseEvent {
    SseEvent::default().event("snapshot").data(json!({"jobs": studio.session.all().await}).to_string())
}

#[cfg(test)]
mod tests {
    use super::attachment_name;

    #[test]
    fn attachment_names_cannot_break_the_header_or_hide() {
        assert_eq!(attachment_name("mug.glb"), "mug.glb");
        assert_eq!(attachment_name("a\"b\r\n.stl"), "a_b__.stl");
        assert_eq!(attachment_name("..hidden.glb"), "hidden.glb");
        assert_eq!(attachment_name("noext"), "noext.bin");
    }
}
