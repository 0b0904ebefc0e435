"""Reading users' rating files: formats, column choice, id handling, validation, matrices."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glocalk.data.matrix import RatingMatrix
from glocalk.data.readers import (
    IdMap,
    Ratings,
    ReaderOptions,
    build_matrix,
    read_pairs,
    read_ratings,
    read_users,
    to_rating_matrix,
)
from glocalk.errors import DataError


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def triples(r: Ratings) -> list[tuple]:
    return list(r.df[["user", "item", "rating"]].itertuples(index=False, name=None))


# --------------------------------------------------------------------------- formats


def test_double_colon_headerless_four_fields(tmp_path):
    p = write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978301968\n")
    r = read_ratings(p)
    assert list(r.df.columns) == ["user", "item", "rating", "timestamp"]
    assert triples(r) == [(1, 1193, 5.0), (1, 661, 3.0), (2, 1193, 4.0)]
    assert r.df["user"].dtype == np.int64 and r.df["item"].dtype == np.int64
    assert r.df["rating"].dtype == np.float64
    assert r.df["timestamp"].tolist() == [978300760, 978302109, 978301968]
    assert r.rating_scale == (3.0, 5.0) and r.offset == 0.0 and r.source == str(p)


def test_double_colon_three_fields_and_single_colons_in_ids(tmp_path):
    p = write(tmp_path, "r.dat", "u:1::a:b::4\nu:2::c::2.5\n")
    r = read_ratings(p)
    assert "timestamp" not in r.df.columns
    assert triples(r) == [("u:1", "a:b", 4.0), ("u:2", "c", 2.5)]


def test_string_ids_kept_verbatim(tmp_path):
    p = write(tmp_path, "r.csv", "user,item,rating\nalice,007,4\nbob,7,3\nalice,7,5\n")
    r = read_ratings(p)
    assert triples(r) == [("alice", "007", 4.0), ("bob", "7", 3.0), ("alice", "7", 5.0)]
    assert r.df["item"].map(type).eq(str).all()  # "007" and "7" stay distinct strings


def test_tsv_headerless_with_timestamp(tmp_path):
    p = write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    r = read_ratings(p)
    assert triples(r) == [(196, 242, 3.0), (186, 302, 3.0), (22, 377, 1.0)]
    assert r.has_timestamp


def test_movielens_csv_header_recognised(tmp_path):
    p = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    r = read_ratings(p)
    assert triples(r) == [(1, 1, 4.0), (1, 3, 4.5)]
    assert r.df["timestamp"].tolist() == [964982703, 964981247]


def test_header_names_are_case_insensitive_and_reordered(tmp_path):
    p = write(tmp_path, "r.csv", "Stars,ReviewerID,ASIN\n5,A1,B9\n2,A2,B9\n")
    r = read_ratings(p)
    assert triples(r) == [("A1", "B9", 5.0), ("A2", "B9", 2.0)]


def test_semicolon_and_whitespace_separators(tmp_path):
    semi = write(tmp_path, "bx.csv",
                 '"User-ID";"ISBN";"Book-Rating"\n"276725";"034545104X";"7"\n"276726";"0155061224";"5"\n')
    r = read_ratings(semi, user_col="User-ID")
    assert triples(r) == [(276725, "034545104X", 7.0), (276726, "0155061224", 5.0)]
    ws = write(tmp_path, "r.txt", "1  10 3\n2 11   4\n")
    assert triples(read_ratings(ws)) == [(1, 10, 3.0), (2, 11, 4.0)]


def test_explicit_separator_and_gzip(tmp_path):
    p = tmp_path / "r.psv.gz"
    with gzip.open(p, "wt") as f:
        f.write("a|x|1\nb|y|2\n")
    assert triples(read_ratings(p, sep="|")) == [("a", "x", 1.0), ("b", "y", 2.0)]
    regex = write(tmp_path, "r.txt", "a||x||1\nb||y||2\n")  # longer separators are regexes, as in pandas
    assert triples(read_ratings(regex, sep=r"\|\|")) == [("a", "x", 1.0), ("b", "y", 2.0)]


def test_blank_lines_are_skipped_and_line_numbers_stay_exact(tmp_path):
    p = write(tmp_path, "r.csv", "user,item,rating\n\na,x,1\n\nb,y,oops\n")
    with pytest.raises(DataError, match=r"line 5: rating 'oops'"):
        read_ratings(p)
    p2 = write(tmp_path, "ok.csv", "user,item,rating\na,x,1\n\nb,y,2\n\n")
    assert len(read_ratings(p2)) == 2


def test_parquet_by_extension_and_magic_bytes(tmp_path):
    df = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": [10, 20], "score": [1.5, 2.0]})
    p = tmp_path / "r.parquet"
    df.to_parquet(p)
    r = read_ratings(p)
    assert triples(r) == [("u1", 10, 1.5), ("u2", 20, 2.0)]
    renamed = tmp_path / "r.bin"
    renamed.write_bytes(p.read_bytes())
    assert triples(read_ratings(renamed)) == triples(r)
    assert triples(read_ratings(p, user_col=0, item_col=1, rating_col=2)) == triples(r)


def test_dataframe_input_keeps_id_types(tmp_path):
    df = pd.DataFrame({"customer_id": ["c1", "c2"], "product_id": [5.0, 6.0], "overall": [3, 4]},
                      index=[10, 11])
    r = read_ratings(df)
    assert triples(r) == [("c1", 5, 3.0), ("c2", 6, 4.0)]
    assert r.df["item"].dtype == np.int64  # whole-number float ids become ints
    assert r.source == "DataFrame"
    # a numpy-built frame (columns 0..n-1) is taken positionally, like a header-less file
    arr = pd.DataFrame(np.array([[1, 2, 3.0], [2, 2, 5.0]]))
    assert triples(read_ratings(arr)) == [(1, 2, 3.0), (2, 2, 5.0)]


def test_ratings_pass_through_and_are_revalidated():
    r = read_ratings(pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [1.0, 5.0]}))
    again = read_ratings(r)
    assert triples(again) == triples(r) and again.rating_scale == r.rating_scale
    with pytest.raises(DataError, match="outside the rating scale 1..4"):
        read_ratings(r, rating_scale=(1, 4))


# --------------------------------------------------------------------------- choosing columns


def test_columns_by_name_and_position(tmp_path):
    p = write(tmp_path, "r.csv", "when,who,what,grade\n100,a,x,3\n200,b,y,4\n")
    by_name = read_ratings(p, user_col="who", item_col="WHAT", rating_col="grade", time_col="when")
    by_pos = read_ratings(p, user_col=1, item_col=2, rating_col=3, time_col=0)
    assert triples(by_name) == triples(by_pos) == [("a", "x", 3.0), ("b", "y", 4.0)]
    assert by_name.df["timestamp"].tolist() == [100, 200]


def test_headerless_positions_and_time_col_false(tmp_path):
    p = write(tmp_path, "r.csv", "5,a,x,99\n4,b,y,98\n")
    r = read_ratings(p, rating_col=0)
    assert triples(r) == [("a", "x", 5.0), ("b", "y", 4.0)] and r.df["timestamp"].tolist() == [99, 98]
    assert not read_ratings(p, rating_col=0, time_col=False).has_timestamp


def test_header_forced_off_reads_first_line_as_data(tmp_path):
    p = write(tmp_path, "r.csv", "1,2,3\n4,5,1\n")
    assert len(read_ratings(p, header=False)) == 2
    assert triples(read_ratings(p, header=True, user_col="1", item_col="2", rating_col="3")) == [(4, 5, 1.0)]


def test_misnamed_column_lists_available_names(tmp_path):
    p = write(tmp_path, "r.csv", "person,thing,grade\na,x,3\n")
    with pytest.raises(DataError) as e:
        read_ratings(p)
    msg = str(e.value)
    assert "r.csv" in msg and "no user column found" in msg and "'person', 'thing', 'grade'" in msg
    assert "user_col=" in msg
    with pytest.raises(DataError, match=r"column 'rater' \(--rating-col, rating_col\) not found; available columns"):
        read_ratings(p, user_col="person", item_col="thing", rating_col="rater")


def test_bad_positions_and_names_without_header(tmp_path):
    p = write(tmp_path, "r.csv", "a,x,3\n")
    with pytest.raises(DataError, match=r"--rating-col 5 \(rating_col=5\) is out of range: the data has 3 column"):
        read_ratings(p, rating_col=5)
    with pytest.raises(DataError, match="read without a header"):
        read_ratings(p, header=False, user_col="user")
    with pytest.raises(DataError, match=r"name the same column: {.user_col.: 0, .item_col.: 0}"):
        read_ratings(p, user_col=0, item_col=0)


def test_ragged_lines(tmp_path):
    with pytest.raises(DataError, match=r"r\.csv: malformed line: .*Expected 3 fields in line 3, saw 5"):
        read_ratings(write(tmp_path, "r.csv", "1,2,3\n2,2,3\n1,3,4,5,6\n"))
    with pytest.raises(DataError, match=r"s\.csv: line 2: missing \(empty or NaN\) rating"):
        read_ratings(write(tmp_path, "s.csv", "1,2,3\n2,2\n"))


def test_two_column_file_is_rejected(tmp_path):
    p = write(tmp_path, "r.csv", "1,2\n3,4\n")
    with pytest.raises(DataError, match="only 2 column"):
        read_ratings(p)


# --------------------------------------------------------------------------- bad input


def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match="ratings file not found: .*nope.csv"):
        read_ratings(tmp_path / "nope.csv")


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        read_ratings(write(tmp_path, "empty.csv", ""))
    with pytest.raises(DataError, match=r"blank\.csv: the file is empty"):
        read_ratings(write(tmp_path, "blank.csv", "\n\n"))
    with pytest.raises(DataError, match=r"head\.csv: no ratings: the file has a header line but no data rows"):
        read_ratings(write(tmp_path, "head.csv", "user,item,rating\n"))
    with pytest.raises(DataError, match="no rows"):
        read_ratings(pd.DataFrame({"user": [], "item": [], "rating": []}))


def test_non_numeric_rating_names_line_and_value(tmp_path):
    p = write(tmp_path, "r.csv", "user,item,rating\na,x,4\nb,y,five\nc,z,also bad\n")
    with pytest.raises(DataError, match=r"r\.csv: line 3: rating 'five' is not a finite number \(2 such"):
        read_ratings(p)


def test_missing_rating_and_missing_id(tmp_path):
    with pytest.raises(DataError, match=r"line 3: missing \(empty or NaN\) rating"):
        read_ratings(write(tmp_path, "r.csv", "user,item,rating\na,x,4\nb,y,\n"))
    with pytest.raises(DataError, match=r"line 2: missing item id"):
        read_ratings(write(tmp_path, "s.csv", "b,y,3\na,,4\n"))
    with pytest.raises(DataError, match=r"row 1 \(0-based\): missing \(empty or NaN\) rating"):
        read_ratings(pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [3.0, np.nan]}))


def test_na_like_ids_are_ids(tmp_path):
    r = read_ratings(write(tmp_path, "r.csv", "user,item,rating\nNA,null,4\nNone,x,2\n"))
    assert triples(r) == [("NA", "null", 4.0), ("None", "x", 2.0)]


def test_out_of_scale_rating(tmp_path):
    p = write(tmp_path, "r.csv", "user,item,rating\na,x,4\nb,y,6\nc,z,0\n")
    with pytest.raises(DataError, match=r"line 3: rating 6 is outside the rating scale 1..5 \(2 such"):
        read_ratings(p, rating_scale=(1, 5))
    with pytest.raises(DataError, match="min < max"):
        read_ratings(p, rating_scale=(5, 1))


def test_scale_from_data_and_offset_for_zero_based(tmp_path):
    r = read_ratings(write(tmp_path, "r.csv", "u,i,r\na,x,0\nb,y,10\nc,z,7\n"))
    assert r.rating_scale == (0.0, 10.0) and r.offset == 1.0 and r.internal_scale == (1.0, 11.0)
    assert r.df["rating"].tolist() == [0.0, 10.0, 7.0]  # the user's units
    neg = read_ratings(pd.DataFrame({"u": [1, 2], "i": [1, 1], "r": [-10, 10]}), user_col="u", item_col="i",
                       rating_col="r")
    assert neg.offset == 11.0
    # a given scale decides the offset even when the data never hits its minimum
    assert read_ratings(pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [3, 9]}),
                        rating_scale=(0, 10)).offset == 1.0


def test_unparsable_timestamp(tmp_path):
    p = write(tmp_path, "r.csv", "user,item,rating,time\na,x,1,2020-01-02\nb,y,2,soon\n")
    with pytest.raises(DataError, match=r"line 3: timestamp 'soon' .*time_col=False"):
        read_ratings(p)
    assert not read_ratings(p, time_col=False).has_timestamp
    ok = read_ratings(write(tmp_path, "d.csv", "user,item,rating,date\na,x,1,2020-01-02\nb,y,2,2021-05-06\n"))
    assert ok.df["timestamp"].dtype.kind == "M"


def test_duplicates(tmp_path):
    p = write(tmp_path, "r.csv", "user,item,rating,timestamp\na,x,1,10\nb,x,2,11\na,x,4,12\na,y,3,13\na,x,5,9\n")
    with pytest.raises(DataError) as e:
        read_ratings(p)
    msg = str(e.value)
    assert "duplicate rating for user 'a' and item 'x' at line 2 and line 4" in msg
    assert "(2 duplicate row(s) in all)" in msg and "duplicates='last'" in msg and "duplicates='mean'" in msg
    assert "--duplicates last" in msg and "--duplicates mean" in msg  # the CLI flags, not only Python's keywords

    last = read_ratings(p, duplicates="last")
    assert sorted(triples(last)) == [("a", "x", 5.0), ("a", "y", 3.0), ("b", "x", 2.0)]
    first = read_ratings(p, duplicates="first")
    assert sorted(triples(first)) == [("a", "x", 1.0), ("a", "y", 3.0), ("b", "x", 2.0)]
    mean = read_ratings(p, duplicates="mean")
    assert triples(mean) == [("a", "x", (1 + 4 + 5) / 3), ("b", "x", 2.0), ("a", "y", 3.0)]
    assert mean.df["timestamp"].tolist() == [12, 11, 13]  # latest time of the pair
    with pytest.raises(ValueError, match="duplicates must be"):
        read_ratings(p, duplicates="sum")


def test_not_a_source():
    with pytest.raises(TypeError):
        read_ratings(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- id maps and matrices


def test_id_map_sorted_lookup_and_unknown():
    r = read_ratings(pd.DataFrame({"user": ["carol", "alice", "bob"], "item": ["i2", "i1", "i2"],
                                   "rating": [1, 2, 3]}))
    ids = IdMap.from_ratings(r)
    assert ids.user_ids.tolist() == ["alice", "bob", "carol"] and ids.item_ids.tolist() == ["i1", "i2"]
    assert ids.to_index("bob") == 1 and ids.to_index("i2", kind="item") == 1
    assert ids.to_index(["carol", "alice"]).tolist() == [2, 0]
    assert ids.to_raw(2) == "carol" and ids.to_raw([0, 1], kind="item").tolist() == ["i1", "i2"]
    with pytest.raises(DataError, match=r"unknown user id\(s\): 'dave', 'eve' \(2 in all\); known user ids .*'alice'"):
        ids.to_index(["alice", "dave", "eve"])
    with pytest.raises(ValueError, match="kind"):
        ids.to_index("alice", kind="users")  # type: ignore[arg-type]


def test_id_map_aligns_int_and_text_ids():
    ints = IdMap(user_ids=np.array([1, 7, 42]), item_ids=np.array([3]))
    assert ints.to_index("42") == 2 and ints.lookup(np.array(["7", "007"], dtype=object)).tolist() == [1, -1]
    texts = IdMap(user_ids=np.array(["007", "7"], dtype=object), item_ids=np.array(["a"], dtype=object))
    assert texts.to_index(7) == 1


def test_to_rating_matrix_entries_by_hand(tmp_path):
    train = read_ratings(write(tmp_path, "train.csv", "user,item,rating\nbob,m2,4\nalice,m1,5\nalice,m3,1\n"))
    test = read_ratings(write(tmp_path, "test.csv", "user,item,rating\nbob,m1,2\n"))
    m = to_rating_matrix(train, test)
    assert isinstance(m, RatingMatrix) and m.shape == (3, 2) and m.name == "train"
    assert m.item_ids.tolist() == ["m1", "m2", "m3"] and m.user_ids.tolist() == ["alice", "bob"]
    dense = m.train.toarray()
    assert dense[0, 0] == 5 and dense[1, 1] == 4 and dense[2, 0] == 1 and m.train.nnz == 3
    assert m.test.toarray()[0, 1] == 2 and m.test.nnz == 1
    assert m.rating_scale == (1.0, 5.0) and m.meta["offset"] == 0.0 and m.meta["dropped_test"] == 0


def test_to_rating_matrix_offset_shift_zero_to_ten():
    df = pd.DataFrame({"user": [1, 1, 2, 2], "item": [1, 2, 1, 2], "rating": [0, 10, 3, 7]})
    r = read_ratings(df)
    m = to_rating_matrix(r, name="zero-based")
    assert m.meta["offset"] == 1.0 and m.meta["rating_scale_raw"] == (0.0, 10.0)
    assert m.rating_scale == (1.0, 11.0)
    np.testing.assert_array_equal(m.train.toarray(), [[1, 4], [11, 8]])  # items x users, rating + 1
    assert m.train.nnz == 4  # the 0 rating survives as 1
    assert m.name == "zero-based"


def test_unknown_test_ids_error_or_drop():
    train = read_ratings(pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "rating": [1.0, 2.0]}))
    test = read_ratings(pd.DataFrame({"user": ["a", "c", "d"], "item": ["y", "x", "z"], "rating": [3.0, 4.0, 5.0]}))
    with pytest.raises(DataError) as e:
        to_rating_matrix(train, test)
    msg = str(e.value)
    assert "2 test rating(s)" in msg and "2 unknown user(s), e.g. 'c', 'd'" in msg
    assert "1 unknown item(s), e.g. 'z'" in msg and "unknown='drop'" in msg
    m = to_rating_matrix(train, test, val=test, unknown="drop")
    assert m.meta["dropped_test"] == 2 and m.meta["dropped_val"] == 2
    assert m.test.nnz == 1 and m.test.toarray()[1, 0] == 3  # item y, user a


def test_test_ratings_below_train_offset_are_rejected():
    train = read_ratings(pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [1.0, 5.0]}))
    test = read_ratings(pd.DataFrame({"user": [1], "item": [1], "rating": [0.0]}))
    with pytest.raises(DataError, match="<= 0 after the offset"):
        to_rating_matrix(train, test)


def test_constant_training_ratings_need_a_scale():
    r = read_ratings(pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [4.0, 4.0]}))
    with pytest.raises(DataError, match="every training rating is 4"):
        to_rating_matrix(r)
    r2 = read_ratings(pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [4.0, 4.0]}), rating_scale=(1, 5))
    assert to_rating_matrix(r2).train.nnz == 2


def test_build_matrix_rejects_duplicates_from_hand_made_ratings():
    r = Ratings(pd.DataFrame({"user": [1, 1], "item": [2, 2], "rating": [3.0, 4.0]}))
    with pytest.raises(DataError, match="duplicate"):
        build_matrix(r, IdMap.from_ratings(r))


# --------------------------------------------------------------------------- pairs and user lists


def pairs(df: pd.DataFrame) -> list[tuple]:
    return list(df[["user", "item"]].itertuples(index=False, name=None))


def test_read_pairs_header_by_names_or_none(tmp_path):
    p = write(tmp_path, "pairs.csv", "item,user,rating\nm1,u1,3\nm2,u2,4\n")
    assert pairs(read_pairs(p)) == [("u1", "m1"), ("u2", "m2")]
    p = write(tmp_path, "pairs.tsv", "u1\tm1\n\nu2\t m2 \n")  # blank line, spaces around an id
    assert pairs(read_pairs(p)) == [("u1", "m1"), ("u2", "m2")]
    p = write(tmp_path, "ids.csv", "007,42\n7,43\n")  # ids stay text, so "007" is not 7
    assert pairs(read_pairs(p)) == [("007", "42"), ("7", "43")]


def test_read_pairs_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty \(no pairs\)"):
        read_pairs(write(tmp_path, "empty.csv", ""))
    with pytest.raises(DataError, match="no user column found"):
        read_pairs(write(tmp_path, "named.csv", "who,what\na,b\n"), header=True)
    with pytest.raises(DataError, match=r"only 1 column\(s\) \(need user, item\)"):
        read_pairs(write(tmp_path, "one.csv", "a\nb\n"))
    with pytest.raises(DataError, match=r"line 3: missing item id"):
        read_pairs(write(tmp_path, "gap.csv", "user,item\na,x\nb,\n"))
    with pytest.raises(DataError, match="pairs file not found"):
        read_pairs(tmp_path / "nope.csv")


def test_read_pairs_from_dataframe_parquet_and_options(tmp_path):
    df = pd.DataFrame({"rating": [1.0, 2.0], "item_id": [10, 11], "user_id": [1, 2]})
    assert pairs(read_pairs(df)) == [(1, 10), (2, 11)]
    df.to_parquet(tmp_path / "p.parquet")
    assert pairs(read_pairs(tmp_path / "p.parquet")) == [(1, 10), (2, 11)]
    p = write(tmp_path, "x.txt", "a|b|c\n")
    assert pairs(read_pairs(p, ReaderOptions(sep="|", user_col=2, item_col=0))) == [("c", "a")]


@pytest.mark.parametrize("header", ["user,item\n", ""])
def test_byte_order_mark_is_not_part_of_a_pairs_header_or_id(tmp_path, header):
    # Defect: a BOM glued to the header's first name turned the header into a pair ("\ufeffuser", "item").
    p = tmp_path / "pairs.csv"
    p.write_bytes(b"\xef\xbb\xbf" + f"{header}u1,m1\nu2,m2\n".encode())
    assert pairs(read_pairs(p)) == [("u1", "m1"), ("u2", "m2")]


def test_read_users_header_bom_blank_lines_and_gzip(tmp_path):
    p = tmp_path / "users.txt"
    p.write_bytes(b"\xef\xbb\xbfuser\r\nalice\r\n\r\n bob \r\n")  # BOM, CRLF: the header is still a header
    assert read_users(p) == ["alice", "bob"]
    with gzip.open(tmp_path / "users.txt.gz", "wt") as f:
        f.write("User_ID\n42\n")
    assert read_users(tmp_path / "users.txt.gz") == ["42"]
    with pytest.raises(DataError, match="no user ids"):
        read_users(write(tmp_path, "only_header.txt", "userid\n"))
    with pytest.raises(DataError, match="users file not found"):
        read_users(tmp_path / "nope.txt")


def test_reader_options_as_object_or_keywords(tmp_path):
    p = write(tmp_path, "r.csv", "a;x;3\na;x;5\n")
    by_kw = read_ratings(p, sep=";", duplicates="mean")
    by_obj = read_ratings(p, ReaderOptions(sep=";", duplicates="mean"))
    assert triples(by_kw) == triples(by_obj) == [("a", "x", 4.0)]
    assert triples(read_ratings(p, ReaderOptions(sep=";"), duplicates="last")) == [("a", "x", 5.0)]
    with pytest.raises(TypeError, match="unknown reader option"):
        read_ratings(p, delimiter=";")


@pytest.mark.parametrize("value", ["1e-46", "-1e-46", "1e39"])
def test_rating_lost_in_float32_is_rejected_naming_the_line(tmp_path, value):
    # Defect: 1e-46 became 0 ('not rated') in the float32 matrix and the rating vanished silently.
    p = write(tmp_path, "r.csv", f"user,item,rating\na,x,3\nb,y,{value}\n")
    shown = re.escape(f"{float(value):g}")
    with pytest.raises(DataError, match=rf"r\.csv: line 3: rating {shown} cannot be stored as a float32"):
        read_ratings(p)


def test_matrix_rejects_ratings_lost_in_float32():
    tiny = Ratings(pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "rating": [1e-46, 3.0]}), offset=0.0)
    with pytest.raises(DataError, match="1e-46 cannot be stored as a float32"):
        to_rating_matrix(tiny)
