// Word-level difference of two transcripts: the longest common subsequence of their normalised words.

/** Marks for ``a`` and ``b`` (arrays of words): true where the word is in both, in order. ``null`` when
 * they are too long to compare in the browser (the table is a.length * b.length cells). */
export function commonWords(a, b, maxCells = 8e6) {
  const n = a.length, m = b.length;
  if ((n + 1) * (m + 1) > maxCells) return null;
  const w = m + 1, table = new Uint32Array((n + 1) * w);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      table[i * w + j] = a[i] === b[j] ? table[(i + 1) * w + j + 1] + 1
        : Math.max(table[(i + 1) * w + j], table[i * w + j + 1]);
    }
  }
  const inA = new Array(n).fill(false), inB = new Array(m).fill(false);
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { inA[i++] = true; inB[j++] = true; }
    else if (table[(i + 1) * w + j] >= table[i * w + j + 1]) i++;
    else j++;
  }
  return { inA, inB };
}
