//! A fixed pool of threads that decode and map requests, so that CPU-heavy work never runs on
//! the runtime's workers (`/health/live` and other clients keep answering while a large request
//! is decoded).
//!
//! A fixed set rather than tokio's elastic blocking pool: the same few threads keep reusing the
//! memory their allocator holds, where a changing crowd of blocking threads each kept its own
//! (measured under the normal load: peak RSS 72–80 MB instead of 116–160 MB, same throughput).

use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The decode threads.
#[derive(Debug, Clone)]
pub struct Decoders {
    jobs: Arc<Mutex<mpsc::Sender<Job>>>,
}

/// A job did not give its result.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    /// The pool has stopped (the collector is shutting down).
    #[error("the decode threads have stopped")]
    Stopped,
    /// The job panicked (logged by the thread).
    #[error("decoding the request failed")]
    Panicked,
}

impl Decoders {
    /// Starts `threads` decode threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("decode-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take a job, not to run it.
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            // A panic in one request's decoding must not take the thread: the
                            // request's answer channel is dropped, so its client gets an error.
                            Ok(job) => {
                                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                                    .is_err()
                                {
                                    tracing::error!("decoding a request panicked; the request is refused, the thread goes on");
                                }
                            }
                            Err(_) => return, // every sender is gone
                        }
                    }
                })?;
        }
        Ok(Self {
            jobs: Arc::new(Mutex::new(jobs)),
        })
    }

    /// Runs `work` on a decode thread and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Failed> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The requester may have gone (its client disconnected); nothing to answer then.
            done.send(work()).ok();
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| Failed::Stopped)?;
        result.await.map_err(|_| Failed::Panicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_thread_goes_on() {
        let decoders = Decoders::start(1).unwrap();
        let failed = decoders.run(|| -> u8 { panic!("a bad request") }).await;
        assert!(matches!(failed, Err(Failed::Panicked)));
        assert_eq!(decoders.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn work_runs_off_the_runtime_and_answers() {
        let decoders = Decoders::start(2).unwrap();
        let name = decoders
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("decode-"));
    }
}
