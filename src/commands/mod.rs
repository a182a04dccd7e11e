//! One module per subcommand.

pub mod bench;
pub mod detach;
pub mod doctor;
pub mod exec;
pub mod images;
pub mod inspect;
pub mod logs;
pub mod ps;
pub mod rm;
pub mod run;
pub mod stop;
