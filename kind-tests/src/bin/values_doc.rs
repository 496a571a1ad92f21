//! `wimsey-values-doc <values.schema.json> <values.yaml> <doc.md> [--check]`: writes the values
//! reference between the `<!-- values:begin -->` and `<!-- values:end -->` markers of the doc, or
//! with `--check` fails when the doc's table is not what the chart says.

use std::process::ExitCode;

use wimsey_kind_tests::values_doc::{replace_between_markers, values_table};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    let paths: Vec<&String> = args.iter().filter(|a| *a != "--check").collect();
    let [schema, values, doc] = paths.as_slice() else {
        eprintln!("usage: wimsey-values-doc <values.schema.json> <values.yaml> <doc.md> [--check]");
        return ExitCode::from(2);
    };
    match run(schema, values, doc, check) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wimsey-values-doc: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(schema: &str, values: &str, doc: &str, check: bool) -> Result<(), String> {
    let read =
        |path: &str| std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"));
    let schema: serde_json::Value =
        serde_json::from_str(&read(schema)?).map_err(|e| format!("{schema}: {e}"))?;
    let defaults: serde_json::Value =
        serde_saphyr::from_str(&read(values)?).map_err(|e| format!("{values}: {e}"))?;
    let document = read(doc)?;
    let updated = replace_between_markers(&document, &values_table(&schema, &defaults))
        .ok_or_else(|| format!("{doc} has no values markers"))?;
    if check {
        if updated != document {
            return Err(format!(
                "{doc}: the values reference is stale: run 'make generate'"
            ));
        }
        return Ok(());
    }
    std::fs::write(doc, updated).map_err(|e| format!("writing {doc}: {e}"))
}
