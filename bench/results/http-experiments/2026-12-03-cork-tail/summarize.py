import re,sys,statistics as st
rows={}
for line in open(sys.argv[1]):
    f=line.split()
    if not f: continue
    name='nginx' if f[0]=='nginx' else ('split' if 'CORKTAIL=262144' in line else ('base' if 'BF_X=1' in line else f[1]))
    pin=re.search(r'pin=(\d)',line).group(1); conns=re.search(r'conns=(\d+)',line).group(1)
    m=re.search(r'Transfer/sec:\s+([\d.]+)(GB|MB)',line); mb=float(m.group(1))*(1024 if m.group(2)=='GB' else 1)
    rq=float(re.search(r'Requests/sec:\s+([\d.]+)',line).group(1))
    kind='range' if rq>50 else 'image'
    cpu=int(re.search(r'server-cpu (\d+)ticks',line).group(1))
    tx=int(re.search(r'txpk (\d+)',line).group(1))
    dur=float(sys.argv[2]) if len(sys.argv)>2 else 8
    mib=mb*dur
    rows.setdefault((kind,pin,conns),{}).setdefault(name,[]).append((mb,cpu/100/(mib/1024),tx/mib))
for k in sorted(rows):
    out=[]
    for n,v in sorted(rows[k].items()):
        out.append(f"{n}: {st.median(x[0] for x in v):7.0f} MiB/s {st.median(x[1] for x in v):.3f} s/GiB {st.median(x[2] for x in v):5.1f} pk/MiB (n={len(v)}; {'/'.join('%.0f'%x[0] for x in v)})")
    print(k); [print('   ',o) for o in out]
