//! Reading a rules file: the YAML document ([`document`]) and the `when` expressions
//! ([`expr`]).

pub mod document;
pub mod expr;
