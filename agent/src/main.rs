//! `hull-agent`: PID 1 of a hull guest (or of a namespace sandbox).

fn main() {
    eprintln!("hull-agent: not implemented yet");
    std::process::exit(125);
}
