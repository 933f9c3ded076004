//! A porcupine-style linearizability checker (being written).
