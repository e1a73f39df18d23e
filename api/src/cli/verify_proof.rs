//! `custos verify-proof`: checks a saved proof with the organisation's public key, offline.

use super::args::VerifyProofArgs;
use crate::infra::integrity::proof::check_file;

/// Prints one line: what the proof shows, or which check failed; false when one did.
pub(crate) fn run(args: &VerifyProofArgs) -> bool {
    let outcome = std::fs::read_to_string(&args.file)
        .map_err(|err| format!("cannot read {}: {err}", args.file.display()))
        .and_then(|text| check_file(&text, &args.public_key));
    match outcome {
        Ok(line) => {
            println!("{line}");
            true
        }
        Err(failed) => {
            println!("FAILED: {failed}");
            false
        }
    }
}
