//! crossfade's own runtimes: the model servers it starts for formats it does not serve in
//! process (scikit-learn, MLflow, Hugging Face), so that an InferenceService of those formats,
//! or one of KServe's stock ServingRuntimes applied unchanged, serves with nothing written by
//! the user.
//!
//! Each is MLServer with one of its runtimes, from PyPI, in a virtual environment of its own
//! under the runtimes directory (`<data dir>/runtimes/<name>/`), which
//! `crossfade runtime install <format>` makes. The command line comes from here, never from
//! Git, so it needs no `--allow-runtime-commands`; it runs with the same scrubbed environment
//! as a ServingRuntime's command. What it loads is the model artifact, pinned by digest: a
//! pickled scikit-learn model runs code when it is loaded, as it does in KServe.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A runtime crossfade provides.
#[derive(Debug, PartialEq, Eq)]
pub struct Builtin {
    /// Its name (`mlserver-sklearn`), and the directory of its environment.
    pub name: &'static str,
    pub formats: &'static [&'static str],
    /// What `runtime install` puts in its environment, from PyPI.
    pub packages: &'static [&'static str],
    /// MLServer's implementation class for the model.
    pub implementation: &'static str,
    /// The module whose import says the environment is complete.
    pub module: &'static str,
}

pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "mlserver-sklearn",
        formats: &["sklearn"],
        packages: &["mlserver", "mlserver-sklearn"],
        implementation: "mlserver_sklearn.SKLearnModel",
        module: "mlserver_sklearn",
    },
    Builtin {
        name: "mlserver-mlflow",
        formats: &["mlflow"],
        packages: &["mlserver", "mlserver-mlflow"],
        implementation: "mlserver_mlflow.MLflowRuntime",
        module: "mlserver_mlflow",
    },
    Builtin {
        name: "mlserver-huggingface",
        formats: &["huggingface"],
        packages: &["mlserver", "mlserver-huggingface"],
        implementation: "mlserver_huggingface.HuggingFaceRuntime",
        module: "mlserver_huggingface",
    },
];

/// The built-in runtime named `name`, or serving the format `name`.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS
        .iter()
        .find(|b| b.name == name || b.formats.contains(&name))
}

/// The built-in runtime that serves `format`.
pub fn for_format(format: &str) -> Option<&'static Builtin> {
    match manifest::stock_serving(format)? {
        manifest::Stock::Native => None,
        manifest::Stock::Builtin(name) => find(name),
    }
}

/// `<data dir>/runtimes`, unless `--runtimes-dir` says otherwise.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("runtimes")
}

impl Builtin {
    /// Its environment under `dir`.
    pub fn env_dir(&self, dir: &Path) -> PathBuf {
        dir.join(self.name)
    }

    fn program(&self, dir: &Path) -> PathBuf {
        self.env_dir(dir).join("bin/mlserver")
    }

    /// Whether its environment is there (MLServer and the runtime's module import).
    pub fn installed(&self, dir: &Path) -> bool {
        let python = self.env_dir(dir).join("bin/python");
        self.program(dir).is_file()
            && Command::new(&python)
                .args(["-c", &format!("import {}", self.module)])
                .output()
                .is_ok_and(|o| o.status.success())
    }

    /// How to start it for one model, or what to install when it is not there. The model's
    /// own `model-settings.json`, when the artifact has one, takes precedence over these
    /// defaults (MLServer reads both).
    pub fn process_spec(
        &self,
        dir: &Path,
        model_name: &str,
        model_dir: &Path,
    ) -> Result<runtime::ProcessSpec, String> {
        let program = self.program(dir);
        if !program.is_file() {
            return Err(format!(
                "the built-in runtime {} (MLServer with {}, from PyPI) is not installed in {}: run `crossfade runtime install {} --runtimes-dir {}`",
                self.name,
                self.packages[1..].join(", "),
                dir.display(),
                self.formats[0],
                dir.display()
            ));
        }
        let dir = model_dir.display().to_string();
        Ok(runtime::ProcessSpec {
            model_name: model_name.to_owned(),
            command: vec![program.display().to_string()],
            args: vec!["start".into(), dir.clone()],
            env: vec![
                (
                    "MLSERVER_MODEL_IMPLEMENTATION".into(),
                    self.implementation.into(),
                ),
                ("MLSERVER_MODEL_URI".into(), dir),
                // One process: no worker pool to fork per model.
                ("MLSERVER_PARALLEL_WORKERS".into(), "0".into()),
            ],
            model_dir: model_dir.to_owned(),
        })
    }
}

/// `crossfade runtime install|list`.
#[derive(Debug, clap::Subcommand)]
pub enum RuntimeCommand {
    /// Make the environment of a built-in runtime: a Python virtual environment with MLServer
    /// and the runtime for the format, from PyPI.
    Install {
        /// A format (sklearn, mlflow, huggingface) or a built-in runtime's name.
        #[arg(required = true)]
        which: Vec<String>,
        #[command(flatten)]
        dirs: RuntimeDirs,
        /// The Python that makes the virtual environment (3.9 to 3.12 for MLServer).
        #[arg(long, default_value = "python3")]
        python: String,
    },
    /// The built-in runtimes, the formats each serves, and whether it is installed.
    List {
        #[command(flatten)]
        dirs: RuntimeDirs,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeDirs {
    /// The data directory of `crossfade up` (default: $XDG_DATA_HOME/crossfade).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the runtimes' environments are (default: `runtimes` in the data directory).
    #[arg(long, value_name = "DIR")]
    pub runtimes_dir: Option<PathBuf>,
}

impl RuntimeDirs {
    pub fn resolve(&self) -> PathBuf {
        self.runtimes_dir.clone().unwrap_or_else(|| {
            default_dir(
                &self
                    .data_dir
                    .clone()
                    .unwrap_or_else(crate::datadir::default_dir),
            )
        })
    }
}

pub fn run(command: &RuntimeCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        RuntimeCommand::Install {
            which,
            dirs,
            python,
        } => {
            let dir = dirs.resolve();
            let mut chosen = Vec::new();
            for w in which {
                match find(w) {
                    Some(b) => chosen.push(b),
                    None if manifest::NATIVE_FORMATS.contains(&w.as_str()) => {
                        println!("{w}: served in process, nothing to install");
                    }
                    None => bail!(
                        "`{w}` is not a built-in runtime or a format one serves; built in: {}",
                        BUILTINS
                            .iter()
                            .map(|b| format!("{} ({})", b.name, b.formats.join(", ")))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
            for b in chosen {
                install(b, &dir, python)?;
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        RuntimeCommand::List { dirs } => {
            let dir = dirs.resolve();
            println!("{:<22} {:<12} STATUS", "RUNTIME", "FORMATS");
            for f in manifest::NATIVE_FORMATS {
                println!("{:<22} {f:<12} in process", "(native)");
            }
            for b in BUILTINS {
                let status = if b.installed(&dir) {
                    format!("installed in {}", b.env_dir(&dir).display())
                } else {
                    format!("not installed: crossfade runtime install {}", b.formats[0])
                };
                println!("{:<22} {:<12} {status}", b.name, b.formats.join(","));
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// Makes (or completes) the environment of `b` under `dir`.
fn install(b: &Builtin, dir: &Path, python: &str) -> anyhow::Result<()> {
    let env = b.env_dir(dir);
    if b.installed(dir) {
        println!("{}: installed in {}", b.name, env.display());
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let env_python = env.join("bin/python");
    if !env_python.exists() {
        eprintln!(
            "{}: making a virtual environment in {}",
            b.name,
            env.display()
        );
        let status = Command::new(python)
            .args(["-m", "venv"])
            .arg(&env)
            .status()
            .with_context(|| format!("starting {python}"))?;
        if !status.success() {
            bail!("`{python} -m venv {}` failed ({status})", env.display());
        }
    }
    eprintln!("{}: installing {} from PyPI", b.name, b.packages.join(" "));
    let status = Command::new(&env_python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(b.packages)
        .status()
        .with_context(|| format!("starting {}", env_python.display()))?;
    if !status.success() {
        bail!("pip could not install {} ({status})", b.packages.join(" "));
    }
    if !b.installed(dir) {
        bail!(
            "{} is installed but `import {}` fails in {}",
            b.packages.join(" "),
            b.module,
            env.display()
        );
    }
    println!("{}: installed in {}", b.name, env.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_format_of_the_manifest_crate_has_a_runtime_here() {
        for (format, name) in manifest::BUILTIN_RUNTIMES {
            let b = for_format(format).unwrap_or_else(|| panic!("{format}"));
            assert_eq!(b.name, *name);
        }
        assert_eq!(for_format("xgboost"), None);
        assert_eq!(find("sklearn"), find("mlserver-sklearn"));
    }

    #[test]
    fn a_missing_environment_says_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = find("sklearn")
            .unwrap()
            .process_spec(dir.path(), "iris", Path::new("/m"))
            .unwrap_err();
        assert!(
            err.contains("crossfade runtime install sklearn --runtimes-dir"),
            "{err}"
        );
    }
}
