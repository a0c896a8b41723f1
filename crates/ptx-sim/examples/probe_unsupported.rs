//! Lists the instructions of a PTX file that the interpreter decodes as
//! unsupported (a quick check for new kernels):
//! `cargo run -p ptx-sim --example probe_unsupported -- file.ptx`.

fn main() {
    for path in std::env::args().skip(1) {
        let src = std::fs::read_to_string(&path).expect("read");
        match ptx_sim::Module::parse(&src) {
            Ok(m) => {
                let u = m.unsupported();
                println!("{path}: {} kernels, {} unsupported instructions", m.kernel_names().len(), u.len());
                for (line, text, why) in u {
                    println!("  line {line}: `{text}` ({why})");
                }
            }
            Err(e) => println!("{path}: {e}"),
        }
    }
}
