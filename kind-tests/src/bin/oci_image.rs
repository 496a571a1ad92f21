//! wimsey-oci-image: writes an OCI image-layout tar (one layer) without a registry or an engine.
//!
//! ```text
//! wimsey-oci-image --out IMAGE.tar --name localhost/wimsey/NAME:TAG [--name ...]
//!                  --add SRC:DST[:MODE] [--add ...] [--entrypoint /bin] [--user UID:GID] [--env K=V]
//! ```
//!
//! The tar imports with `ctr -n k8s.io images import IMAGE.tar` and `kind load image-archive IMAGE.tar`:
//! each `--name` becomes one `index.json` entry with the `io.containerd.image.name` annotation.
//! Output is reproducible: fixed mtimes and owners, so the same binaries give the same digests.

use std::process::ExitCode;

use wimsey_kind_tests::oci::{ImageSpec, LayerFile, write_image_layout_tar};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wimsey-oci-image: {err}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut spec = ImageSpec::default();
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => out = Some(value()?),
            "--name" => spec.names.push(value()?),
            "--entrypoint" => spec.entrypoint.push(value()?),
            "--cmd" => spec.cmd.push(value()?),
            "--user" => spec.user = Some(value()?),
            "--env" => spec.env.push(value()?),
            "--add" => spec.files.push(LayerFile::parse(&value()?)?),
            "-h" | "--help" => {
                println!(
                    "usage: wimsey-oci-image --out IMAGE.tar --name REF [--name REF]... \
                     --add SRC:DST[:MODE]... [--entrypoint ARG]... [--cmd ARG]... [--user U:G] [--env K=V]..."
                );
                return Ok(());
            }
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    let out = out.ok_or("--out is required")?;
    if spec.names.is_empty() {
        return Err("at least one --name is required".into());
    }
    let digest =
        write_image_layout_tar(&spec, std::path::Path::new(&out)).map_err(|e| e.to_string())?;
    println!("{out}: {} ({digest})", spec.names.join(", "));
    Ok(())
}
