//! Profiles on demand, for operators: a CPU profile over N seconds and a heap profile, each a
//! gzipped pprof protobuf download (`go tool pprof`, `pprof`, Grafana Pyroscope read them).
//!
//! Off unless the binary was built with the `profiling` feature *and* started with
//! `--profiling`; and then served only to clients on this machine (loopback), until admin API
//! keys exist. Heap profiles also need jemalloc's profiler switched on at start:
//! `MALLOC_CONF=prof:true,prof_active:true,lg_prof_sample:19`.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::Extension;
use axum::http::{HeaderValue, header};
use axum::response::Response;

use super::extract::Query;
use crate::domain::Invalid;
use crate::error::{ApiError, ApiResult};
use crate::server::Connection;

/// Only one CPU profile at a time: the sampler is process-wide.
static CPU_BUSY: AtomicBool = AtomicBool::new(false);

fn local_only(Extension(connection): Extension<Connection>) -> ApiResult<()> {
    if connection.peer().ip().is_loopback() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "profiles are only served to clients on this machine".to_owned(),
        ))
    }
}

fn download(bytes: Vec<u8>, name: &'static str) -> Response {
    let mut response = Response::new(axum::body::Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Query of the CPU profile.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuParams {
    seconds: Option<u64>,
}

/// A CPU profile: samples every thread at 99 Hz for `seconds` (1..=60, default 10).
pub async fn cpu(
    peer: Extension<Connection>,
    Query(params): Query<CpuParams>,
) -> ApiResult<Response> {
    local_only(peer)?;
    let seconds = match params.seconds {
        None => 10,
        Some(seconds) if (1..=60).contains(&seconds) => seconds,
        Some(_) => Err(Invalid::new("seconds must be a whole number from 1 to 60"))?,
    };
    if CPU_BUSY.swap(true, Ordering::AcqRel) {
        return Err(ApiError::Conflict(
            "a CPU profile is already being taken; try again when it is done".to_owned(),
        ));
    }
    let profile = tokio::task::spawn_blocking(move || take_cpu_profile(seconds)).await;
    CPU_BUSY.store(false, Ordering::Release);
    let bytes =
        profile.map_err(|e| ApiError::Internal(anyhow::anyhow!("profiler task: {e}")))??;
    Ok(download(bytes, "sessiond-cpu.pb.gz"))
}

#[cfg(feature = "profiling")]
fn take_cpu_profile(seconds: u64) -> ApiResult<Vec<u8>> {
    use anyhow::Context;
    use pprof::protos::Message;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(99)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .context("starting the CPU profiler")?;
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    let profile = guard
        .report()
        .build()
        .context("building the CPU profile")?
        .pprof()
        .context("encoding the CPU profile")?;
    let mut encoded = Vec::new();
    profile
        .encode(&mut encoded)
        .context("encoding the CPU profile")?;
    gzip(&encoded)
}

#[cfg(feature = "profiling")]
fn gzip(bytes: &[u8]) -> ApiResult<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(bytes)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("compressing a profile: {e}")))?;
    encoder
        .finish()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("compressing a profile: {e}")))
}

#[cfg(not(feature = "profiling"))]
fn take_cpu_profile(_seconds: u64) -> ApiResult<Vec<u8>> {
    Err(ApiError::NotFound("no such resource".to_owned()))
}

/// A heap profile of live allocations (sampled by jemalloc).
pub async fn heap(peer: Extension<Connection>) -> ApiResult<Response> {
    local_only(peer)?;
    #[cfg(feature = "profiling")]
    {
        let Some(control) = jemalloc_pprof::PROF_CTL.as_ref() else {
            return Err(ApiError::Conflict(
                "heap profiling is off: start sessiond with \
                 MALLOC_CONF=prof:true,prof_active:true,lg_prof_sample:19"
                    .to_owned(),
            ));
        };
        let mut control = control.lock().await;
        if !control.activated() {
            return Err(ApiError::Conflict(
                "jemalloc's profiler is not active (prof_active:false)".to_owned(),
            ));
        }
        let bytes = control
            .dump_pprof()
            .map_err(|e| ApiError::Internal(e.context("dumping the heap profile")))?;
        Ok(download(bytes, "sessiond-heap.pb.gz"))
    }
    #[cfg(not(feature = "profiling"))]
    Err(ApiError::NotFound("no such resource".to_owned()))
}
