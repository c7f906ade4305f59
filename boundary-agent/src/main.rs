mod cli;

fn main() {
    println!("boundary: under construction");
}
