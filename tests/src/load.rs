//! [`Load`]: client threads that send requests one after another until told to stop, and remember
//! how each one ended.
//!
//! ```no_run
//! use mediary_e2e::{Client, Load, Mediary, Upstream, public_channel};
//!
//! let upstream = Upstream::echo();
//! let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();
//! let url = mediary.url("/echo");
//! let load = Load::start(4, move |client, thread, n| {
//!     client.post(url.clone()).body(format!("{thread}-{n}"))
//! });
//! std::thread::sleep(std::time::Duration::from_secs(1));
//! let outcomes = load.stop();
//! assert!(outcomes.iter().all(|o| o.reply.as_ref().is_ok_and(|r| r.status() == 200)));
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::client::{Call, Client, Reply};

/// How one request of a [`Load`] ended.
#[derive(Debug)]
pub struct Outcome {
    /// Which thread sent it, and its number among that thread's requests (from 0).
    pub thread: usize,
    pub n: usize,
    /// When it was sent, and when its whole response had arrived or it failed.
    pub sent: Instant,
    pub done: Instant,
    /// The whole response, or why there is none (a transport error: refused, reset, cut short).
    pub reply: Result<Reply, String>,
}

/// Client threads sending requests in a loop; see the module documentation.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// Starts `threads` threads, each with a keep-alive [`Client`] of its own, sending
    /// `request(client, thread, n)` for n = 0, 1, … until [`Load::halt`] or [`Load::stop`].
    pub fn start(
        threads: usize,
        request: impl Fn(&Client, usize, usize) -> Call + Send + Sync + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let request = Arc::new(request);
        let threads = (0..threads)
            .map(|thread| {
                let stop = Arc::clone(&stop);
                let request = Arc::clone(&request);
                std::thread::Builder::new()
                    .name(format!("e2e-load-{thread}"))
                    .spawn(move || {
                        let client = Client::new();
                        let mut outcomes = Vec::new();
                        for n in 0.. {
                            if stop.load(Ordering::Acquire) {
                                break;
                            }
                            let call = request(&client, thread, n);
                            let sent = Instant::now();
                            let reply = call.try_send();
                            outcomes.push(Outcome {
                                thread,
                                n,
                                sent,
                                done: Instant::now(),
                                reply,
                            });
                        }
                        outcomes
                    })
                    .expect("spawn a load thread")
            })
            .collect();
        Load { stop, threads }
    }

    /// Tells every thread to send no more requests; those in flight carry on.
    pub fn halt(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Waits for the requests in flight to end and returns every outcome, by thread then in
    /// order. Call [`Load::halt`] first, or use [`Load::stop`].
    pub fn join(self) -> Vec<Outcome> {
        self.threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("a load thread panicked"))
            .collect()
    }

    /// [`Load::halt`], then [`Load::join`].
    pub fn stop(self) -> Vec<Outcome> {
        self.halt();
        self.join()
    }
}
