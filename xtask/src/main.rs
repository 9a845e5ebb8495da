//! Project automation: `cargo xtask test` runs everything CI runs; `cargo xtask bench` measures
//! the gateway against its peers.

mod bench;
mod scale;
mod trees;

use std::process::Command;

use anyhow::{Context, bail};

/// Crates that must stay free of IO stacks: no async runtime, no HTTP, no git.
const PURE_CRATES: &[&str] = &["manifest", "engine", "analysis"];
const FORBIDDEN_IN_PURE: &[&str] = &[
    "tokio",
    "hyper",
    "reqwest",
    "axum",
    "gix",
    "git2",
    "tract-onnx",
    "mio",
];
/// Forbidden anywhere: one rustls provider (ring), no C TLS stacks.
const FORBIDDEN_ANYWHERE: &[&str] = &["aws-lc-rs", "aws-lc-sys", "openssl-sys"];

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "test" => test(),
        "invariants" => invariants(),
        "bench" => bench::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => {
            eprintln!("usage: cargo xtask <test|invariants|bench>");
            eprintln!("  test        fmt check, clippy, every test, dependency invariants");
            eprintln!("  invariants  only the dependency invariants");
            eprintln!(
                "  bench       the gateway against nginx and a Python server (BENCHMARKS.md)"
            );
            std::process::exit(2);
        }
    }
}

/// Where the tests' built-in runtimes are installed (relative to the workspace).
const RUNTIMES_DIR: &str = "target/test-runtimes";

/// Programs the tests drive for real, and the Debian package of each.
const TOOLS: &[(&str, &[&str], &str)] = &[
    ("git", &["--version"], "git"),
    ("gpg", &["--version"], "gnupg"),
    ("ssh-keygen", &["-?"], "openssh-client"),
    // A real Prometheus, scraping crossfade, for the analysis provider's end-to-end test.
    ("prometheus", &["--version"], "prometheus"),
    // A real OCI registry (the CNCF distribution server), for oci:// artifacts.
    ("docker-registry", &["--version"], "docker-registry"),
    // Headless Chromium, for the dashboard's end-to-end test.
    ("chromium", &["--version"], "chromium"),
];

fn test() -> anyhow::Result<()> {
    install_tools()?;
    // From PyPI, in a venv of their own: moto (an S3-compatible server) for the S3 tests
    // MLServer with its scikit-learn runtime (a real V2 server started from a ServingRuntime),
    // and tritonclient, a real V2 client.
    let python = python_venv(
        "target/test-venv",
        &["moto[server]", "tritonclient[http]"],
        "import moto.server, tritonclient.http",
    )?;
    // The kserve SDK, a real V1/V2 client, in a venv of its own: it needs a FastAPI newer
    // than MLServer allows.
    let kserve = python_venv(
        "target/test-venv-kserve",
        &["kserve==0.21.0"],
        "from kserve import InferenceRESTClient",
    )?;
    // crossfade's built-in scikit-learn and MLflow runtimes (MLServer from PyPI), made as a
    // user makes them: with `crossfade runtime install`.
    run(
        "cargo",
        &[
            "run",
            "--quiet",
            "--",
            "runtime",
            "install",
            "sklearn",
            "mlflow",
            "--runtimes-dir",
            RUNTIMES_DIR,
        ],
    )?;
    let test_env = [
        ("CROSSFADE_PYTHON", python.as_str()),
        ("CROSSFADE_KSERVE_PYTHON", kserve.as_str()),
        ("CROSSFADE_RUNTIMES", RUNTIMES_DIR),
    ];
    run("cargo", &["fmt", "--all", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run_with_env(
        "cargo",
        &["test", "--workspace", "--all-targets"],
        &test_env,
    )?;
    run("cargo", &["test", "--workspace", "--doc"])?;
    invariants()?;
    // The README's first command, exactly as a new user types it (the demo: about 20 s), and
    // the lint of the bundled example that the README shows next.
    run("cargo", &["run", "--quiet", "--", "demo"])?;
    run("cargo", &["run", "--quiet", "--", "lint", "examples/iris"])?;
    eprintln!("xtask: all checks passed");
    Ok(())
}

/// A venv under `target/` with `packages`, made (or completed) when `check` fails to import;
/// returns its python.
fn python_venv(dir: &str, packages: &[&str], check: &str) -> anyhow::Result<String> {
    let dir = std::path::Path::new(dir);
    let python = dir.join("bin/python");
    if !python.exists() {
        run("python3", &["-m", "venv", dir.to_str().unwrap_or_default()])?;
    }
    // Not canonicalized: the venv's python is a symlink to the base interpreter, and only the
    // link's path selects the venv.
    let python = std::env::current_dir()?.join(python).display().to_string();
    let ok = Command::new(&python)
        .args(["-c", check])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let mut args = vec!["-m", "pip", "install", "-q"];
        args.extend(packages);
        run(&python, &args)?;
    }
    Ok(python)
}

/// Installs the tools the tests need when the machine lacks them.
fn install_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        // Present when it starts at all, whatever it says about the arguments.
        .filter(|(cmd, args, _)| Command::new(cmd).args(*args).output().is_err())
        .map(|(_, _, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    // Without questions: a package's configuration prompt would wait forever.
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let mut all = vec!["DEBIAN_FRONTEND=noninteractive", "apt-get"];
        all.extend(args);
        if root {
            run("env", &all)
        } else {
            all.insert(0, "env");
            run("sudo", &all)
        }
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

fn invariants() -> anyhow::Result<()> {
    for krate in PURE_CRATES {
        let deps = tree(&["-p", krate, "-e", "normal"])?;
        for bad in FORBIDDEN_IN_PURE {
            if deps.iter().any(|d| d == bad) {
                bail!(
                    "invariant broken: `{krate}` depends on `{bad}` (it must do no IO of its own)"
                );
            }
        }
    }
    let all = tree(&["--workspace", "-e", "normal,build"])?;
    for bad in FORBIDDEN_ANYWHERE {
        if all.iter().any(|d| d == bad) {
            bail!("invariant broken: the workspace depends on `{bad}`");
        }
    }
    eprintln!("xtask: dependency invariants hold");
    Ok(())
}

/// Names of every package in `cargo tree` for the given arguments.
fn tree(args: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut full = vec!["tree", "--prefix", "none", "--format", "{p}"];
    full.extend(args);
    let out = Command::new("cargo")
        .args(&full)
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    run_with_env(cmd, args, &[])
}

fn run_with_env(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd} {}", args.join(" "));
    let status = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("starting {cmd}"))?;
    if !status.success() {
        bail!("`{cmd} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
