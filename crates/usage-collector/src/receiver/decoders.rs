//! A fixed pool of threads that decode and map requests, so that CPU-heavy work never runs on
//! the runtime's workers (`/health/live` and other clients keep answering while a large request
//! is decoded).
//!
//! A fixed set rather than tokio's elastic blocking pool: the same few threads keep reusing the
//! memory their allocator holds, where a changing crowd of blocking threads each kept its own
//! (measured under the normal load: peak RSS 72–80 MB instead of 116–160 MB, same throughput).
//!
//! The queue of jobs has no count limit of its own: every job that runs a request's work
//! carries that request's share of the in-flight budget (see `admission`), so the budget
//! bounds the queue, and a job whose requester has gone (its client disconnected) is skipped,
//! giving its share back at once.

use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;
use tonic::{Code, Status};

use super::admission::retryable;

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

impl Failed {
    /// What a client hears: the collector is stopping (retryable, `UNAVAILABLE`, 503 over
    /// OTLP/HTTP), or decoding its request panicked (`INTERNAL`, 500: retrying the same request
    /// would fail the same way).
    pub fn status(&self) -> Status {
        match self {
            Failed::Stopped => retryable(
                Code::Unavailable,
                format!("{self}; retry against another collector"),
            ),
            Failed::Panicked => Status::internal(self.to_string()),
        }
    }
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

    /// Runs `work` on a decode thread and waits for its result. When the returned future is
    /// dropped before a thread takes the job, `work` is dropped without running; once it runs,
    /// it runs to its end and its result is dropped there (with whatever budget it holds).
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Failed> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            if done.is_closed() {
                // The requester has gone (its client disconnected): no one to answer.
                return;
            }
            // It may still go while the work runs; its result is dropped then.
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
    async fn a_job_whose_requester_is_gone_is_skipped_and_dropped() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::task::Context;
        let decoders = Decoders::start(1).unwrap();
        // Keep the only thread busy until told.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let decoders = decoders.clone();
            async move { decoders.run(move || wait.recv().ok()).await }
        });
        tokio::task::yield_now().await;
        // Queue a job holding a share (here an Arc), then drop its requester.
        let ran = Arc::new(AtomicBool::new(false));
        let held = Arc::new(());
        let mut abandoned = Box::pin(decoders.run({
            let (ran, held) = (ran.clone(), held.clone());
            move || {
                let _held = held;
                ran.store(true, Ordering::SeqCst);
            }
        }));
        let waker = std::task::Waker::noop();
        assert!(
            abandoned
                .as_mut()
                .poll(&mut Context::from_waker(waker))
                .is_pending()
        );
        drop(abandoned);
        assert_eq!(
            Arc::strong_count(&held),
            2,
            "the queued job holds its share"
        );
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        // The thread has taken the abandoned job once a later one answers.
        assert_eq!(decoders.run(|| 7).await.unwrap(), 7);
        assert!(!ran.load(Ordering::SeqCst), "the abandoned work ran");
        assert_eq!(Arc::strong_count(&held), 1, "its share was given back");
    }

    #[test]
    fn a_panic_is_internal_and_a_stop_is_retryable() {
        use tonic_types::StatusExt;
        let panicked = Failed::Panicked.status();
        assert_eq!(panicked.code(), Code::Internal);
        assert!(panicked.get_details_retry_info().is_none());
        let stopped = Failed::Stopped.status();
        assert_eq!(stopped.code(), Code::Unavailable);
        assert!(stopped.get_details_retry_info().is_some());
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
