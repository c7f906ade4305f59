mod cli;

fn main() {
    println!("bridge: under construction");
}
