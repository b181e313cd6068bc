use clap::Parser;

fn main() {
    let cli = payrecon::cli::Cli::parse();
    payrecon::telemetry::init();
    let code = payrecon::app::main(cli);
    std::process::exit(code);
}
