-- Table facts keep their cell (issue #19): the row and column of the number in its table as printed on its
-- page, "r5c3" (1-based, header rows counted); "" for a number of running text. The subject already joins the
-- cell's row and column headers ("北京 住宿费 三类人员").
ALTER TABLE facts ADD COLUMN cell VARCHAR DEFAULT '';
