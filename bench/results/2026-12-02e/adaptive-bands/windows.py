import csv,sys,statistics as st
# Per 100 ms interval of each fixed run: its handler p90 and p99 over the
# lowest interval p90 (p99) of the 28-handler run; the 10th, 50th and 90th
# percentile of the intervals (first and last 2 intervals left out).
for f in sys.argv[1:]:
    by={}
    for r in csv.DictReader(open(f)):
        by.setdefault(int(r['concurrency']),[]).append((float(r['handler_p90_ms']),float(r['handler_p99_ms'])))
    lo=min(by)
    b90=min(p for p,_ in by[lo][2:-2]); b99=min(p for _,p in by[lo][2:-2])
    print(f, 'lowest at %d: p90 %.3f ms, p99 %.3f ms' % (lo,b90,b99))
    for c in sorted(by):
        w=by[c][2:-2]
        r90=sorted(p/b90 for p,_ in w); r99=sorted(p/b99 for _,p in w)
        q=lambda r,f: r[min(len(r)-1,int(f*len(r)))]
        print('  %3d handlers, %3d intervals: p90 %.3f / %.3f / %.3f   p99 %.3f / %.3f / %.3f' % (c,len(w),q(r90,.1),st.median(r90),q(r90,.9),q(r99,.1),st.median(r99),q(r99,.9)))
