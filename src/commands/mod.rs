//! One module per subcommand.

pub mod bench;
pub mod doctor;
pub mod inspect;
pub mod logs;
pub mod ps;
pub mod rm;
pub mod stop;
