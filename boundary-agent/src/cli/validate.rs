//! `boundary validate`: report every problem of one or more config files.

use std::path::PathBuf;

use boundary_agent::policy;
use boundary_agent::policy::{DomainPattern, Target};

/// Check config files without running anything; every problem is reported with
/// FILE:LINE:COLUMN: FIELD. Exits 1 if any file is invalid.
#[derive(clap::Args)]
pub struct Args {
    /// The config files to check.
    #[arg(required = true, value_name = "CONFIG")]
    files: Vec<PathBuf>,
}

pub fn main(args: Args) -> i32 {
    let mut code = 0;
    for path in &args.files {
        match policy::load(path) {
            Ok(policy) => {
                let (mut exact, mut wild, mut nets) = (0, 0, 0);
                for rule in &policy.rules {
                    match &rule.target {
                        Target::Domain(DomainPattern::Exact(_)) => exact += 1,
                        Target::Domain(DomainPattern::Wildcard(_)) => wild += 1,
                        Target::Net(_) => nets += 1,
                    }
                }
                println!(
                    "{}: ok: policy `{}`, mode {}, {} rules ({exact} domains, {wild} wildcards, \
                     {nets} networks), loopback {}",
                    path.display(),
                    policy.name,
                    policy.mode.as_str(),
                    policy.rules.len(),
                    if policy.allow_loopback {
                        "allowed"
                    } else {
                        "denied"
                    },
                );
                for warning in policy.warnings() {
                    println!("{}: warning: {warning}", path.display());
                }
            }
            Err(e) => {
                eprintln!("{e}");
                code = 1;
            }
        }
    }
    code
}
