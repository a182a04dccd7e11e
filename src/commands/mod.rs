//! One module per subcommand.

pub mod bench;
pub mod build;
pub mod doctor;
pub mod exec;
pub mod history;
pub mod images;
pub mod inspect;
pub mod logs;
pub mod network;
pub mod port;
pub mod ps;
pub mod push;
pub mod rm;
pub mod run;
pub mod source;
pub mod stop;

/// Runs `f` for every container key, printing each key that succeeded (as
/// docker does) and each error; exit status 1 when any failed.
pub fn for_each(
    keys: &[String],
    mut f: impl FnMut(&str) -> Result<(), hull::ContainerError>,
) -> i32 {
    let mut status = 0;
    for key in keys {
        match f(key) {
            Ok(()) => println!("{key}"),
            Err(e) => {
                eprintln!("hull: {}", hull::error::chain(&e));
                status = 1;
            }
        }
    }
    status
}
