//! `boundary`: run commands under a kernel-enforced egress allowlist.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
