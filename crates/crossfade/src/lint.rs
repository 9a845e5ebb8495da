//! `crossfade lint`: parse and validate manifests, print diagnostics as text or JSON.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use manifest::termcolor::{ColorChoice, StandardStream, WriteColor};
use manifest::{Options, Parsed, Severity, Sources};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directories (searched recursively for *.yaml and *.yml) or single files.
    #[arg(default_value = ".")]
    dirs: Vec<PathBuf>,
    /// Every storageUri must pin a sha256 digest (a path segment `sha256-<64 hex>`).
    #[arg(long)]
    require_digest: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// When to colour text output.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let sources = Sources::read(&args.dirs)?;
    let parsed = manifest::parse(
        &sources,
        Options {
            require_digest: args.require_digest,
        },
    );
    match args.output {
        Output::Json => {
            let report = Report::new(&sources, &parsed);
            let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
            writeln!(std::io::stdout().lock(), "{text}")?;
        }
        Output::Text => {
            let choice = match args.color {
                Color::Always => ColorChoice::Always,
                Color::Never => ColorChoice::Never,
                Color::Auto
                    if std::io::stdout().is_terminal()
                        && std::env::var_os("NO_COLOR").is_none() =>
                {
                    ColorChoice::Auto
                }
                Color::Auto => ColorChoice::Never,
            };
            let mut out = StandardStream::stdout(choice);
            print_text(&mut out, &sources, &parsed)?;
        }
    }
    Ok(if parsed.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_text(out: &mut dyn WriteColor, sources: &Sources, parsed: &Parsed) -> anyhow::Result<()> {
    for d in &parsed.diagnostics {
        d.emit(out, sources).context("rendering a diagnostic")?;
    }
    let used = parsed.resources.iter().filter(|r| r.used).count();
    if !parsed.resources.is_empty() {
        writeln!(out, "resources:")?;
        let ids: Vec<String> = parsed
            .resources
            .iter()
            .map(|r| match &r.namespace {
                Some(ns) => format!("{ns}/{}", r.name),
                None => r.name.clone(),
            })
            .collect();
        let kind_width = parsed
            .resources
            .iter()
            .map(|r| r.kind.len())
            .max()
            .unwrap_or(0);
        let id_width = ids.iter().map(String::len).max().unwrap_or(0);
        for (r, id) in parsed.resources.iter().zip(&ids) {
            let skipped = if r.used { "" } else { "  (skipped)" };
            writeln!(
                out,
                "  {:kind_width$}  {id:id_width$}  {}:{}{skipped}",
                r.kind,
                sources.get(r.file).name,
                r.line
            )?;
        }
    }
    let errors = parsed.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = parsed.diagnostics.len() - errors;
    writeln!(
        out,
        "{} file(s), {} resource(s) ({used} used by crossfade), {errors} error(s), {warnings} warning(s)",
        sources.len(),
        parsed.resources.len(),
    )?;
    Ok(())
}

// === JSON report (a public contract: fields are only ever added) ===

#[derive(Serialize)]
struct Report<'a> {
    resources: Vec<ResourceDto<'a>>,
    diagnostics: Vec<DiagnosticDto<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceDto<'a> {
    api_version: &'a str,
    kind: &'a str,
    namespace: Option<&'a str>,
    name: &'a str,
    file: &'a str,
    line: u32,
}

#[derive(Serialize)]
struct DiagnosticDto<'a> {
    severity: &'static str,
    code: &'static str,
    file: &'a str,
    line: u32,
    column: u32,
    field: &'a str,
    message: &'a str,
    hint: Option<&'a str>,
}

impl<'a> Report<'a> {
    fn new(sources: &'a Sources, parsed: &'a Parsed) -> Self {
        let resources = parsed
            .resources
            .iter()
            .map(|r| ResourceDto {
                api_version: &r.api_version,
                kind: &r.kind,
                namespace: r.namespace.as_deref(),
                name: &r.name,
                file: &sources.get(r.file).name,
                line: r.line,
            })
            .collect();
        let diagnostics = parsed
            .diagnostics
            .iter()
            .map(|d| DiagnosticDto {
                severity: match d.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                },
                code: d.code.as_str(),
                file: &sources.get(d.file).name,
                line: d.line(),
                column: d.column(),
                field: &d.field,
                message: &d.message,
                hint: d.hint.as_deref(),
            })
            .collect();
        Self {
            resources,
            diagnostics,
        }
    }
}
