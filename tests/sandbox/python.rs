//! CPython guests: the language, its packages, files in and out.

use crate::common::*;
use warden::runtime::Language;
use warden::sandbox::{CancelHandle, InputFile};

#[test]
fn python_hello() {
    let r = py("print('hello')");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.exit_code, Some(0));
    assert!(r.fuel_used > 0);
}

#[test]
fn python_uncaught_exception_is_an_error_with_traceback() {
    let r = py("raise ValueError('nope')");
    assert_outcome(&r, "error");
    assert_eq!(r.exit_code, Some(1));
    assert!(r.stderr.contains("ValueError: nope"), "{}", r.stderr);
}

#[test]
fn python_sys_exit_code_is_reported() {
    let r = py("import sys; sys.exit(3)");
    assert_outcome(&r, "error");
    assert_eq!(r.exit_code, Some(3));
}

#[test]
fn numpy_and_pandas_compute() {
    let r = py("import numpy as np, pandas as pd\n\
                a = np.arange(10)\n\
                df = pd.DataFrame({'a': range(1000)})\n\
                print(int(a.sum()), int(df.a.sum()), df.shape)");
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout.trim(), "45 499500 (1000, 1)");
}

#[test]
fn matplotlib_savefig_produces_a_png_artifact() {
    let r = py("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n\
                plt.plot([1, 2, 3], [1, 4, 9])\nplt.savefig('plot.png')\nprint('saved')");
    assert_outcome(&r, "ok");
    let png = r.artifacts.iter().find(|a| a.path == "plot.png").unwrap_or_else(|| panic!("no plot.png in {r:#?}"));
    assert_eq!(png.mime, "image/png");
    assert!(png.size > 1000, "{png:?}");
    assert_eq!(png.sha256.len(), 64);
}

#[test]
fn input_files_are_readable_and_outputs_are_artifacts() {
    let files = vec![InputFile { path: "data/in.csv".into(), content: b"x,y\n1,2\n3,4\n".to_vec() }];
    let code = "import csv, os\nrows = list(csv.DictReader(open('data/in.csv')))\n\
                open('out.txt', 'w').write(str(sum(int(r['y']) for r in rows)))\nprint(os.getcwd())";
    let (r, ws) = run_with(spec(Language::Python, code), files, CancelHandle::new());
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout.trim(), "/workspace");
    assert_eq!(r.artifacts.len(), 1, "only the new file is an artifact: {:?}", r.artifacts);
    assert_eq!(r.artifacts[0].path, "out.txt");
    assert_eq!(ws.read_file("out.txt", 100).unwrap(), b"6");
}

#[test]
fn stdin_reaches_the_program() {
    let mut s = spec(Language::Python, "import sys; data = sys.stdin.read(); print(data.upper())");
    s.stdin = b"piped input".to_vec();
    let (r, _) = run_with(s, Vec::new(), CancelHandle::new());
    assert_outcome(&r, "ok");
    assert_eq!(r.stdout.trim(), "PIPED INPUT");
}

#[test]
fn reading_stdin_past_its_end_does_not_block() {
    let r = py("import sys\nfor _ in range(3): sys.stdin.read()\nprint('done')");
    assert_outcome(&r, "ok");
}
