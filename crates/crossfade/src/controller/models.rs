//! Loading revisions: which runtime serves a predictor, fetching and verifying its artifact,
//! loading and warming up the model, a bounded number at a time.
//!
//! # Guarantees
//!
//! - At most [`Loader::concurrency`] loads run at once, on blocking threads; the rest wait in
//!   order. A load that does not finish within `--load-timeout` fails; its thread is left to
//!   finish on its own.
//! - One artifact digest is loaded into memory once: revisions of the same model (the same
//!   verified bytes) share the loaded ONNX model while any of them serves.
//! - Nothing from Git runs unless the operator allowed it; checked before any download. The
//!   built-in runtimes' commands come from crossfade and need no permission.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::plan::{LoadJob, LoadedRevision};

/// Loads revisions for every Application.
pub struct Loader {
    cache: artifact::Cache,
    policy: crate::runtime_policy::RuntimeCommands,
    /// Where the built-in runtimes' environments are.
    runtimes_dir: PathBuf,
    upstream: gateway::Timeouts,
    deadline: Duration,
    permits: Arc<tokio::sync::Semaphore>,
    concurrency: usize,
    /// Loaded ONNX models by artifact digest.
    shared: Mutex<HashMap<String, runtime::OnnxModel>>,
}

impl Loader {
    pub fn new(
        cache: artifact::Cache,
        policy: crate::runtime_policy::RuntimeCommands,
        runtimes_dir: PathBuf,
        upstream: gateway::Timeouts,
        deadline: Duration,
    ) -> Arc<Self> {
        // Loads are mostly CPU (hashing, optimising the model) with some waiting on
        // downloads: twice the cores keeps both busy.
        let concurrency =
            2 * std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Arc::new(Self {
            cache,
            policy,
            runtimes_dir,
            upstream,
            deadline,
            permits: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            concurrency,
            shared: Mutex::new(HashMap::new()),
        })
    }

    /// How many loads run at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Fetches, verifies, loads and warms up a revision. The error is fit to show (no URI
    /// secrets in it).
    pub async fn load(self: Arc<Self>, job: LoadJob) -> Result<LoadedRevision, String> {
        let Ok(_permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return Err("the loader is shut down".into());
        };
        let this = Arc::clone(&self);
        let revision = job.revision.clone();
        let job_model = job.service.name.clone();
        // crossfade's own runtimes are MLServer, which speaks only V2.
        let v2_only = matches!(job.runtime, Ok(Serving::Builtin { .. }));
        let loading = tokio::task::spawn_blocking(move || this.load_blocking(&job));
        let loaded = match tokio::time::timeout(self.deadline, loading).await {
            Ok(done) => done.unwrap_or_else(|e| Err(format!("the load task failed: {e}"))),
            Err(_) => Err(format!(
                "the load did not finish within {} s (--load-timeout)",
                self.deadline.as_secs()
            )),
        }
        .map_err(|reason| manifest::redact_uris(&reason))?;
        let (model, digest) = loaded;
        let revision = match model {
            Loaded::InProcess(m) => gateway::Revision::in_process(revision, m),
            Loaded::Process(p) => {
                let upstream = gateway::Upstream::with_timeouts(
                    format!("127.0.0.1:{}", p.port()),
                    self.upstream,
                );
                // What the model server says it takes and gives, for the signature check.
                let declared = upstream.signature(&job_model).await;
                let mut r = gateway::Revision::proxy(revision, upstream);
                if let Some((inputs, outputs)) = declared {
                    r = r.with_signature(inputs, outputs);
                }
                if v2_only {
                    r = r.speaking_only_v2();
                }
                // The process lives until the last request routed to it is done.
                r.guard = Some(Box::new(p));
                r
            }
        };
        Ok(LoadedRevision {
            revision: Arc::new(revision),
            digest: digest.to_string(),
        })
    }

    fn load_blocking(&self, job: &LoadJob) -> Result<(Loaded, manifest::Digest), String> {
        let serving = job.runtime.clone()?;
        // Nothing from Git runs unless the operator allowed it; checked before any download.
        if let Serving::Command(rt) = &serving {
            let program = rt.container.command.first().map_or("", String::as_str);
            self.policy.check(&rt.meta.name, program)?;
        }
        let fetched = self.cache.fetch(&job.uri).map_err(|e| e.to_string())?;
        let model_dir = || {
            if fetched.path.is_dir() {
                fetched.path.clone()
            } else {
                fetched.path.parent().unwrap_or(&fetched.path).to_owned()
            }
        };
        let process = match serving {
            Serving::InProcess => None,
            Serving::Command(rt) => Some((
                rt.meta.name.clone(),
                runtime::ProcessSpec {
                    model_name: job.service.name.clone(),
                    command: rt.container.command.clone(),
                    args: rt.container.args.clone(),
                    env: rt.container.env.clone(),
                    model_dir: model_dir(),
                },
            )),
            Serving::Builtin { builtin, .. } => Some((
                builtin.name.to_owned(),
                builtin.process_spec(&self.runtimes_dir, &job.service.name, &model_dir())?,
            )),
        };
        if let Some((name, spec)) = process {
            let process = runtime::ProcessRuntime::start(spec, Duration::from_secs(120))
                .map_err(|e| format!("runtime {name}: {e}"))?;
            return Ok((Loaded::Process(process), fetched.digest));
        }
        match job.format.as_str() {
            "onnx" => {}
            "xgboost" | "lightgbm" => {
                let file = tree_file(&fetched.path, &job.format)?;
                let forest = if job.format == "xgboost" {
                    runtime::Forest::load_xgboost(&file)
                } else {
                    runtime::Forest::load_lightgbm(&file)
                }
                .map_err(|e| e.to_string())?;
                let model = runtime::Model::Trees(Arc::new(forest));
                model
                    .warm_up()
                    .map_err(|e| format!("the warm-up inference failed: {e}"))?;
                return Ok((Loaded::InProcess(model), fetched.digest));
            }
            other => return Err(format!("model format {other} needs a ServingRuntime")),
        }
        let key = fetched.digest.to_string();
        if let Some(model) = self.shared.lock().expect("models").get(&key) {
            return Ok((Loaded::InProcess(model.clone().into()), fetched.digest));
        }
        let file = onnx_file(&fetched.path)?;
        // A tree ensemble (scikit-learn's forests and boosters, converted XGBoost and
        // LightGBM models) is evaluated natively; any other graph by tract.
        if let Some(forest) = runtime::Forest::load_onnx_ml(&file).map_err(|e| e.to_string())? {
            let model = runtime::Model::Trees(Arc::new(forest));
            model
                .warm_up()
                .map_err(|e| format!("the warm-up inference failed: {e}"))?;
            return Ok((Loaded::InProcess(model), fetched.digest));
        }
        let model = runtime::OnnxModel::load(&file).map_err(|e| e.to_string())?;
        model
            .warm_up()
            .map_err(|e| format!("the warm-up inference failed: {e}"))?;
        let mut shared = self.shared.lock().expect("models");
        // Models no revision holds any more are let go.
        shared.retain(|_, m| m.holders() > 1);
        let model = shared.entry(key).or_insert(model).clone();
        Ok((Loaded::InProcess(model.into()), fetched.digest))
    }
}

/// A loaded model: in-process, or a model server process.
enum Loaded {
    InProcess(runtime::Model),
    Process(Arc<runtime::ProcessRuntime>),
}

/// The model file of a tree ensemble's artifact: the file itself, or in a directory the file
/// KServe's server of the format loads (`model.json` for XGBoost, `model.bst` or `model.txt`
/// for LightGBM, which writes text), else the one file of the format's extension.
fn tree_file(path: &Path, format: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        return Ok(path.to_owned());
    }
    let (names, extensions, what): (&[&str], &[&str], &str) = if format == "xgboost" {
        (
            &["model.json", "model.ubj"],
            &["json", "ubj"],
            "an XGBoost model (model.json or model.ubj)",
        )
    } else {
        (
            &["model.bst", "model.txt"],
            &["txt"],
            "a LightGBM text model (model.txt)",
        )
    };
    for name in names {
        if path.join(name).is_file() {
            return Ok(path.join(name));
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| extensions.contains(&x))
        })
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ if format == "xgboost" && path.join("model.bst").is_file() => Err(
            "the artifact holds an XGBoost model in the old binary format: save it with `booster.save_model(\"model.json\")`".into(),
        ),
        [] => Err(format!("the artifact has no {what}")),
        _ => Err(format!(
            "the artifact has several model files and none is named {}",
            names[0]
        )),
    }
}

/// The model file of an artifact: the file itself, or the one `.onnx` file of a directory
/// (`model.onnx` when there are several).
fn onnx_file(path: &Path) -> Result<PathBuf, String> {
    if path.is_file() {
        return Ok(path.to_owned());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("the artifact has no .onnx file".into()),
        many => many
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == "model.onnx"))
            .cloned()
            .ok_or_else(|| {
                "the artifact has several .onnx files and none is named model.onnx".into()
            }),
    }
}

/// How a revision is served.
#[derive(Debug, Clone, PartialEq)]
pub enum Serving {
    /// In process: ONNX, XGBoost, LightGBM.
    InProcess,
    /// A ServingRuntime's own command, from Git: runs only as the operator allows.
    Command(Box<manifest::ServingRuntime>),
    /// One of crossfade's runtimes, for the format; `runtime` is the ServingRuntime (one of
    /// KServe's stock ones) it stands in for, if one was chosen.
    Builtin {
        builtin: &'static crate::builtin::Builtin,
        runtime: Option<String>,
    },
}

/// How `runtime` (chosen for `format`) serves it: its command, or for a command-less stock
/// runtime of KServe's, crossfade's own serving of the format.
fn serving_of(runtime: &manifest::ServingRuntime, format: &str) -> Result<Serving, String> {
    if !runtime.container.command.is_empty() {
        return Ok(Serving::Command(Box::new(runtime.clone())));
    }
    let image = runtime.container.image.as_deref().unwrap_or_default();
    if !manifest::is_stock_image(image) {
        return Err(format!(
            "ServingRuntime {} has no command, and its image `{image}` is not one of KServe's that crossfade stands in for ({}): give the server's command line in the container's `command`",
            runtime.meta.name,
            manifest::STOCK_IMAGES.join(", ")
        ));
    }
    match manifest::stock_serving(format) {
        Some(manifest::Stock::Native) => Ok(Serving::InProcess),
        Some(manifest::Stock::Builtin(_)) => Ok(Serving::Builtin {
            builtin: crate::builtin::for_format(format)
                .ok_or_else(|| format!("no built-in runtime serves {format}"))?,
            runtime: Some(runtime.meta.name.clone()),
        }),
        None => Err(format!(
            "ServingRuntime {} stands for KServe's image `{image}`, and crossfade has no runtime of its own for model format {format}",
            runtime.meta.name
        )),
    }
}

/// The runtime for a predictor: the one `runtime:` names (a command-less stock runtime of
/// KServe's maps to crossfade's serving of the format), else, for a format served natively
/// (ONNX, XGBoost, LightGBM), in process, else the auto-selectable runtime of the highest
/// priority that supports the format, else crossfade's built-in runtime for it.
pub fn choose_runtime(
    runtimes: &[manifest::ServingRuntime],
    namespace: &str,
    model: &manifest::ModelSpec,
) -> Result<Serving, String> {
    let format = model.format.name.as_str();
    let stock = manifest::stock_serving(format);
    let visible = |r: &&manifest::ServingRuntime| {
        r.cluster_scoped || r.meta.namespace_or_default() == namespace
    };
    if let Some(name) = &model.runtime {
        return match runtimes
            .iter()
            .filter(visible)
            .find(|r| &r.meta.name == name)
        {
            Some(r) => serving_of(r, format),
            None if stock == Some(manifest::Stock::Native) => Ok(Serving::InProcess),
            None => Err(format!("runtime {name} is not defined in the manifests")),
        };
    }
    // Natively served formats run in-process unless a runtime is named.
    if stock == Some(manifest::Stock::Native) {
        return Ok(Serving::InProcess);
    }
    let chosen = runtimes
        .iter()
        .filter(visible)
        .filter(|r| !r.disabled)
        .filter_map(|r| {
            let f = r.supported_model_formats.iter().find(|f| {
                f.auto_select
                    && f.name == format
                    && (model.format.version.is_none() || f.version == model.format.version)
            })?;
            Some((f.priority.unwrap_or(0), r))
        })
        .max_by_key(|(p, _)| *p)
        .map(|(_, r)| r);
    match chosen {
        Some(r) => serving_of(r, format),
        None => match crate::builtin::for_format(format) {
            Some(builtin) => Ok(Serving::Builtin {
                builtin,
                runtime: None,
            }),
            None => Err(format!(
                "no ServingRuntime supports model format {format}; crossfade runs ONNX, XGBoost and LightGBM in-process, scikit-learn, MLflow and Hugging Face models through its built-in MLServer runtimes, and other formats through a ServingRuntime"
            )),
        },
    }
}
