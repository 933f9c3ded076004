//! Connections between KV servers as the kvraft tester sets them: links are
//! per pair and both ways; a partition is two fully connected sides cut off
//! from each other.

/// A KV cluster's server-to-server links.
pub trait Links {
    /// Number of servers.
    fn servers(&self) -> usize;
    /// Enables (`on`) or disables the links between server `i` and each of
    /// `to`, both directions.
    fn set_links(&self, i: usize, to: &[usize], on: bool);

    /// Reconnect every server to every other.
    fn connect_all(&self) {
        let all: Vec<usize> = (0..self.servers()).collect();
        for i in 0..self.servers() {
            self.set_links(i, &all, true);
        }
    }

    /// Each side fully connected internally and cut off from the other.
    fn partition(&self, p1: &[usize], p2: &[usize]) {
        for &i in p1 {
            self.set_links(i, p2, false);
            self.set_links(i, p1, true);
        }
        for &i in p2 {
            self.set_links(i, p1, false);
            self.set_links(i, p2, true);
        }
    }
}

/// The kvraft tester's `make_partition` for `n` servers: a majority of
/// `n/2 + 1` non-leaders and a minority of `n/2` servers whose last member is
/// `leader` (server 0 if none).
pub fn make_partition(n: usize, leader: Option<usize>) -> (Vec<usize>, Vec<usize>) {
    let l = leader.unwrap_or(0);
    let others = (0..n).filter(|&i| i != l);
    let mut p1: Vec<usize> = others.clone().take(n / 2 + 1).collect();
    let mut p2: Vec<usize> = others.skip(n / 2 + 1).collect();
    p2.push(l);
    p1.sort_unstable();
    (p1, p2)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    struct Matrix(RefCell<Vec<Vec<bool>>>);

    impl Links for Matrix {
        fn servers(&self) -> usize {
            self.0.borrow().len()
        }

        fn set_links(&self, i: usize, to: &[usize], on: bool) {
            let mut m = self.0.borrow_mut();
            for &j in to {
                m[i][j] = on;
                m[j][i] = on;
            }
        }
    }

    #[test]
    fn the_leader_ends_the_minority_and_sides_are_cut_apart() {
        assert_eq!(make_partition(5, Some(2)), (vec![0, 1, 3], vec![4, 2]));
        assert_eq!(make_partition(5, None), (vec![1, 2, 3], vec![4, 0]));
        assert_eq!(make_partition(3, Some(0)), (vec![1, 2], vec![0]));

        let links = Matrix(RefCell::new(vec![vec![false; 5]; 5]));
        links.connect_all();
        links.partition(&[0, 1, 3], &[4, 2]);
        let m = links.0.borrow();
        let side = |i: usize| [0, 1, 3].contains(&i);
        for i in 0..5 {
            for j in 0..5 {
                assert_eq!(m[i][j], side(i) == side(j), "link {i}-{j}");
            }
        }
    }
}
