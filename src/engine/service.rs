//! The generation service: one thread owns the model and answers generation
//! requests from anywhere in the process (episode tasks, the HTTP server),
//! batching the requests that wait together into one decode loop.
//!
//! Owns: the bounded request queue (a full queue is refused at once, never
//! waited on without bound), batching, the policy version (bumped by every
//! weight update, so each sampled token can be attributed to the weights that
//! produced it) and in-process weight updates. Does not own sampling math
//! (`sampling`) or the decode loop (`generate`).
//!
//! Why a thread and a channel rather than a lock around the model: requests
//! arriving while a batch decodes are picked up together as the next batch,
//! and callers on the async runtime never block a worker thread on the CPU
//! forward pass.

use super::generate::{generate_each, Completion, SeqRequest};
use super::sampling::SamplingParams;
use crate::model::qwen2::Model;
use anyhow::{anyhow, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use tokio::sync::oneshot;

/// One generation request: a prompt of token ids, its sampling parameters
/// (seed included) and the ids it stops on.
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub stop: Vec<u32>,
}

/// A completion with the policy version of the weights that produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub completion: Completion,
    pub policy_version: u64,
}

type Update = Box<dyn FnOnce(&mut Model) -> Result<()> + Send>;

enum Job {
    Generate(GenRequest, oneshot::Sender<Result<Generated>>),
    Update(Update, oneshot::Sender<Result<u64>>),
}

/// Why a request was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the generation queue is full ({0} requests waiting); retry later")]
    QueueFull(usize),
    #[error("the generation service has stopped")]
    Stopped,
}

/// Facts about the served model, for `/v1/models` and messages.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub name: String,
    pub max_context: usize,
    pub vocab_size: usize,
}

/// A handle to the service; clone it freely. The thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct EngineService {
    tx: SyncSender<Job>,
    queue: usize,
    version: Arc<AtomicU64>,
    info: Arc<ModelInfo>,
}

impl EngineService {
    /// Start the service thread over `model`. At most `queue` requests wait;
    /// at most `max_batch` sequences decode together.
    pub fn start(model: Model, name: &str, queue: usize, max_batch: usize) -> Result<Self> {
        let queue = queue.max(1);
        let (tx, rx) = sync_channel::<Job>(queue);
        let version = Arc::new(AtomicU64::new(0));
        let info = Arc::new(ModelInfo { name: name.to_string(), max_context: model.cfg.max_position_embeddings, vocab_size: model.cfg.vocab_size });
        let v = version.clone();
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || serve_loop(model, rx, max_batch.max(1), v))
            .map_err(|e| anyhow!("cannot start the generation thread: {e}"))?;
        Ok(EngineService { tx, queue, version, info })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The version of the weights now loaded (0 at start, +1 per update).
    pub fn policy_version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Queue a request; refused at once when the queue is full.
    pub fn submit(&self, req: GenRequest) -> std::result::Result<oneshot::Receiver<Result<Generated>>, Refused> {
        let (otx, orx) = oneshot::channel();
        match self.tx.try_send(Job::Generate(req, otx)) {
            Ok(()) => Ok(orx),
            Err(TrySendError::Full(_)) => Err(Refused::QueueFull(self.queue)),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }

    /// Generate, waiting for room in the queue when it is full (for in-process
    /// callers, which bound their own concurrency).
    pub async fn generate(&self, req: GenRequest) -> Result<Generated> {
        let mut req = Some(req);
        loop {
            let r = req.take().expect("request present");
            let (otx, orx) = oneshot::channel();
            match self.tx.try_send(Job::Generate(r, otx)) {
                Ok(()) => return orx.await.map_err(|_| anyhow!("{}", Refused::Stopped))?,
                Err(TrySendError::Full(Job::Generate(r, _))) => {
                    req = Some(r);
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(_) => return Err(anyhow!("{}", Refused::Stopped)),
            }
        }
    }

    /// Run `f` on the model between batches (e.g. copy in new weights) and
    /// bump the policy version; returns the new version.
    pub async fn update(&self, f: impl FnOnce(&mut Model) -> Result<()> + Send + 'static) -> Result<u64> {
        let (otx, orx) = oneshot::channel();
        let mut job = Job::Update(Box::new(f), otx);
        loop {
            match self.tx.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(j)) => {
                    job = j;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(anyhow!("{}", Refused::Stopped)),
            }
        }
        orx.await.map_err(|_| anyhow!("{}", Refused::Stopped))?
    }
}

fn serve_loop(mut model: Model, rx: Receiver<Job>, max_batch: usize, version: Arc<AtomicU64>) {
    while let Ok(first) = rx.recv() {
        // Take what else is waiting, up to the batch size; an update ends the
        // batch so that every request in a batch sees one set of weights.
        let mut jobs = vec![first];
        let mut pending_update = None;
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(Job::Update(f, tx)) => {
                    pending_update = Some((f, tx));
                    break;
                }
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut batch: Vec<(GenRequest, oneshot::Sender<Result<Generated>>)> = vec![];
        for j in jobs {
            match j {
                Job::Generate(r, tx) => batch.push((r, tx)),
                Job::Update(f, tx) => {
                    run_batch(&mut model, std::mem::take(&mut batch), &version);
                    apply_update(&mut model, f, tx, &version);
                }
            }
        }
        run_batch(&mut model, batch, &version);
        if let Some((f, tx)) = pending_update {
            apply_update(&mut model, f, tx, &version);
        }
    }
}

fn apply_update(model: &mut Model, f: Update, tx: oneshot::Sender<Result<u64>>, version: &AtomicU64) {
    let r = f(model).map(|()| version.fetch_add(1, Ordering::SeqCst) + 1);
    let _ = tx.send(r);
}

fn run_batch(model: &mut Model, batch: Vec<(GenRequest, oneshot::Sender<Result<Generated>>)>, version: &AtomicU64) {
    if batch.is_empty() {
        return;
    }
    let v = version.load(Ordering::SeqCst);
    // Requests with different stop sets decode apart (rare); the usual case
    // is one group.
    let mut groups: Vec<(Vec<u32>, Vec<(SeqRequest, oneshot::Sender<Result<Generated>>)>)> = vec![];
    for (r, tx) in batch {
        let seq = SeqRequest { prompt: r.prompt, params: r.params, stream: 0 };
        match groups.iter_mut().find(|(s, _)| *s == r.stop) {
            Some((_, g)) => g.push((seq, tx)),
            None => groups.push((r.stop, vec![(seq, tx)])),
        }
    }
    for (stop, group) in groups {
        let (reqs, txs): (Vec<SeqRequest>, Vec<_>) = group.into_iter().unzip();
        match generate_each(model, &reqs, &stop, false) {
            Ok(outs) => {
                for (c, tx) in outs.into_iter().zip(txs) {
                    let _ = tx.send(Ok(Generated { completion: c, policy_version: v }));
                }
            }
            Err(e) if reqs.len() > 1 => {
                // One bad request must not fail the others: retry one by one.
                tracing::debug!("batch of {} failed ({e:#}); retrying one at a time", reqs.len());
                for (r, tx) in reqs.into_iter().zip(txs) {
                    let res = generate_each(model, std::slice::from_ref(&r), &stop, false).map(|mut o| Generated { completion: o.remove(0), policy_version: v });
                    let _ = tx.send(res);
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for tx in txs {
                    let _ = tx.send(Err(anyhow!("{msg}")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny::tiny_model;

    fn req(prompt: Vec<u32>, seed: u64, n: usize) -> GenRequest {
        GenRequest { prompt, params: SamplingParams { max_new_tokens: n, seed, ..Default::default() }, stop: vec![] }
    }

    #[tokio::test]
    async fn answers_match_direct_generation_and_updates_bump_the_version() {
        let svc = EngineService::start(tiny_model(3), "tiny", 8, 4).unwrap();
        let a = svc.generate(req(vec![5, 6, 7], 11, 6)).await.unwrap();
        let mut m = tiny_model(3);
        let direct = generate_each(&mut m, &[SeqRequest { prompt: vec![5, 6, 7], params: req(vec![], 11, 6).params, stream: 0 }], &[], false).unwrap();
        assert_eq!(a.completion, direct[0]);
        assert_eq!(a.policy_version, 0);
        let v = svc.update(|m| {
            m.weights.embed.data.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(v, 1);
        let b = svc.generate(req(vec![5, 6, 7], 11, 6)).await.unwrap();
        assert_eq!(b.policy_version, 1);
        assert_ne!(b.completion.logprobs, a.completion.logprobs, "the update reached the engine");
    }

    #[tokio::test]
    async fn a_bad_request_fails_alone() {
        let svc = EngineService::start(tiny_model(3), "tiny", 8, 4).unwrap();
        let good = svc.submit(req(vec![5, 6], 1, 3)).unwrap();
        let bad = svc.submit(req(vec![100_000], 1, 3)).unwrap();
        let (g, b) = (good.await.unwrap(), bad.await.unwrap());
        assert_eq!(g.unwrap().completion.tokens.len(), 3);
        assert!(format!("{:#}", b.unwrap_err()).contains("outside the model's vocabulary"));
    }
}
