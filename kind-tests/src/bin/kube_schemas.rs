//! `wimsey-kube-schemas <openapi-v2.json> <out-dir>`: writes kubeconform's schemas (one strict,
//! standalone JSON schema per kind) made from a real API server's OpenAPI document.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out_dir] = args.as_slice() else {
        eprintln!("usage: wimsey-kube-schemas <openapi-v2.json> <out-dir>");
        return ExitCode::from(2);
    };
    match run(input, out_dir) {
        Ok(count) => {
            println!("wimsey-kube-schemas: {count} schemas in {out_dir}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("wimsey-kube-schemas: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(input: &str, out_dir: &str) -> Result<usize, String> {
    let text = std::fs::read_to_string(input).map_err(|e| format!("reading {input}: {e}"))?;
    let document: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{input} is not JSON: {e}"))?;
    let schemas = wimsey_kind_tests::kube_schemas::schemas_from_openapi(&document)?;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("creating {out_dir}: {e}"))?;
    for (name, schema) in &schemas {
        let path = std::path::Path::new(out_dir).join(name);
        std::fs::write(&path, schema.to_string())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(schemas.len())
}
