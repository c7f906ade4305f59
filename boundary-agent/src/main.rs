fn main() {
    println!("boundary: under construction");
}
