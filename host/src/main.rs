//! The `host` binary.
use clap::Parser;

/// tweedie: score-based diffusion with random walks driven by Tweedie's formula.
#[derive(Parser)]
#[command(name = "host", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
