//! The meshing threads: Postprocess's CPU-heavy work (meshing, the print
//! report, exports, previews) runs on a fixed set of OS threads, optionally
//! at a lower scheduling priority than the rest of the node
//! (`devices.mesh_nice`, added to the node's nice value).
//!
//! Why a priority: on a node whose cores are all busy meshing, the control
//! plane — admission, claims, events, status replies, all on the tokio
//! workers — gets the same share of the CPU as each meshing thread, so an
//! agent's `accepted` waits behind other jobs' meshes. With the meshing
//! threads niced, the kernel runs the control plane first whenever it has
//! work. Measured on 2 cores at saturation (md/benchmarks.md): nice 10 cuts
//! submit → accepted p50 about 3× but costs about 14 % of the throughput
//! (jobs are claimed one by one as they arrive instead of batching up behind
//! the meshes), and at half the saturated rate it changes nothing. So the
//! default, [`MESH_NICE`], is 0: the node's own priority.
//! Threads a job starts (the preview renderer's) inherit the priority.
//!
//! One thread per core: as many meshes run at once as under the semaphore
//! over tokio's blocking pool this replaces; more wait in its queue. A job
//! that panics is reported as an error and the thread goes on.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
};

use tokio::sync::oneshot;

/// How much lower the meshing threads' priority is than the node's by
/// default (added to the nice value, at most 19): none (see the module doc).
pub const MESH_NICE: i32 = 0;

type Task = Box<dyn FnOnce() + Send>;

/// Why a job did not return a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// The job panicked.
    #[error("meshing job panicked: {0}")]
    Panicked(String),
    /// The pool is shut down.
    #[error("meshing pool stopped")]
    Stopped,
}

/// A fixed pool of lower-priority threads (see the module doc).
pub struct MeshPool {
    tx: Option<mpsc::Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

impl MeshPool {
    /// Start `threads` threads (at least one) at `nice` above the node's
    /// priority. A priority the kernel refuses leaves the thread as it is.
    pub fn start(threads: usize, nice: i32) -> std::io::Result<Self> {
        let nice = nice.clamp(0, 19);
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new().name(format!("meshing-{i}")).spawn(move || {
                    if nice > 0 {
                        lower_priority(nice);
                    }
                    loop {
                        // The lock is held only while waiting for the next task.
                        let task = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(task) => task,
                            Err(_) => return,
                        };
                        task();
                    }
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self { tx: Some(tx), threads })
    }

    /// Run `job` on a pool thread; waits (asynchronously) for its value.
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
        let (done, value) = oneshot::channel();
        let task: Task = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(job)).map_err(|panic| PoolError::Panicked(panic_message(&*panic)));
            let _ = done.send(result);
        });
        self.tx.as_ref().ok_or(PoolError::Stopped)?.send(task).map_err(|_| PoolError::Stopped)?;
        value.await.map_err(|_| PoolError::Stopped)?
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for MeshPool {
    fn drop(&mut self) {
        // Closing the queue ends each thread after its current job; they
        // are not joined, so dropping never waits for a long mesh.
        self.tx.take();
    }
}

/// Raise the calling thread's nice value by `nice` (capped at 19).
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            return;
        }
        if libc::setpriority(libc::PRIO_PROCESS, tid, (now + nice).min(19)) != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "meshing thread keeps the node's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The calling thread's nice value (Linux; 0 elsewhere).
pub fn current_nice() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: as in `lower_priority`.
    unsafe {
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    }
    #[cfg(not(target_os = "linux"))]
    0
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_at_a_lower_priority_and_return_their_values() {
        let pool = MeshPool::start(2, 10).unwrap();
        assert_eq!(pool.threads(), 2);
        let here = current_nice();
        let (there, spawned) = pool.run(|| (current_nice(), std::thread::spawn(current_nice).join().unwrap())).await.unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(there, (here + 10).min(19), "the pool thread runs at the lower priority");
            assert_eq!(spawned, there, "threads a job starts inherit it");
        }
        assert_eq!(here, current_nice(), "the caller's priority is unchanged");
        let values = futures::future::join_all((0..8).map(|i| pool.run(move || i * i))).await;
        assert_eq!(values.into_iter().map(Result::unwrap).collect::<Vec<_>>(), (0..8).map(|i| i * i).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_pool_goes_on() {
        let pool = MeshPool::start(1, 0).unwrap();
        let err = pool.run(|| -> u32 { panic!("bad volume") }).await.unwrap_err();
        assert_eq!(err, PoolError::Panicked("bad volume".into()));
        assert_eq!(pool.run(|| 7).await, Ok(7), "the one thread survived the panic");
    }
}
