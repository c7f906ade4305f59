fn main() {
    println!("bridge: under construction");
}
