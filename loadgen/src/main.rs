//! `loadgen`: drives Cairn clusters and compares latency histograms.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loadgen::compare;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Cairn's load generator and histogram tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Plot the percentile spectra of several runs (.hgrm files from any source) into one
    /// picture, and print throughput and p50/p90/p99/p99.9/max side by side.
    Compare {
        /// `.hgrm` files; a `.json` summary beside one (same name) adds its throughput.
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Output picture: `.svg` or `.png`.
        #[arg(long)]
        out: PathBuf,
        /// Labels for the runs, comma-separated, in the order of the files (default: the
        /// file names).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Title of the plot.
        #[arg(long, default_value = "Latency by percentile")]
        title: String,
        /// TrueType font for the text (default: DejaVu Sans from the system).
        #[arg(long)]
        font: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Compare {
            files,
            out,
            labels,
            title,
            font,
        } => {
            if !labels.is_empty() && labels.len() != files.len() {
                eprintln!(
                    "loadgen: {} labels for {} files: give one label per file",
                    labels.len(),
                    files.len()
                );
                return ExitCode::from(2);
            }
            let result = (|| {
                compare::register_font(font.as_deref())?;
                let mut runs = Vec::new();
                for (i, f) in files.iter().enumerate() {
                    runs.push(compare::load(f, labels.get(i).cloned())?);
                }
                compare::plot(&runs, &out, &title)?;
                Ok::<_, compare::CompareError>(runs)
            })();
            match result {
                Ok(runs) => {
                    print!("{}", compare::table(&runs));
                    println!("wrote {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
