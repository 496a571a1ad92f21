//! wimsey-operator binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wimsey_operator::admin::client::{entries_table, fetch_entries};
use wimsey_operator::run::{RunOptions, run};

#[derive(Debug, Parser)]
#[command(name = "wimsey-operator", version, about = "wimsey operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CRDs as YAML, or write one file per CRD into a directory.
    Crd {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Also write the CRD reference (markdown) to this file.
        #[arg(long)]
        reference: Option<PathBuf>,
    },
    /// Run the operator.
    Run(Box<RunOptions>),
    /// Print the registration entries a running operator holds.
    Entries {
        /// The operator's debug server (loopback only: run this in the pod, or through
        /// `kubectl port-forward <operator pod> 8081`).
        #[arg(
            long,
            env = "WIMSEY_ADMIN_URL",
            default_value = "http://127.0.0.1:8081"
        )]
        admin_addr: String,
        /// Only this pod (UID or namespace/name).
        #[arg(long)]
        pod: Option<String>,
        /// Only pods on this node.
        #[arg(long)]
        node: Option<String>,
        /// Print the JSON of /debug/entries instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir, reference } => {
            match out_dir {
                None => print!("{}", wimsey_operator::crdgen::all_crds_yaml()?),
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    for path in wimsey_operator::crdgen::write_crd_files(&dir)? {
                        eprintln!("wrote {path}");
                    }
                }
            }
            if let Some(path) = reference {
                let doc =
                    wimsey_operator::crdref::reference_markdown(&wimsey_operator::crd::all_crds());
                std::fs::write(&path, doc)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Run(options) => run(*options).await?,
        Command::Entries {
            admin_addr,
            pod,
            node,
            json,
        } => {
            let entries = fetch_entries(&admin_addr, pod.as_deref(), node.as_deref())
                .await
                .with_context(|| format!("reading entries from {admin_addr}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", entries_table(&entries));
            }
        }
    }
    Ok(())
}
