// gcc -O2 zlib-chain-test.c -lz -o t && ./t $(find UNSQUASHED_TREE -type f -size +200k | head -150)
// Deflates each 128 KiB piece with zlib -9, then with deflateTune(32, 258, 258, CHAIN): same bytes?
#include <zlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static int z(const unsigned char*in,int n,unsigned char*out,int cap,int chain){
  z_stream s; memset(&s,0,sizeof s);
  deflateInit2(&s,9,Z_DEFLATED,15,8,Z_DEFAULT_STRATEGY);
  if(chain) deflateTune(&s,32,258,258,chain);
  s.next_in=(unsigned char*)in; s.avail_in=n; s.next_out=out; s.avail_out=cap;
  deflate(&s,Z_FINISH); int r=cap-s.avail_out; deflateEnd(&s); return r;}
int main(int argc,char**argv){
  int chains[]={8,16,32,64,128,256,1024};
  long same[7]={0}; long blocks=0; double t9=0,tc[7]={0};
  unsigned char *buf=malloc(131072),*a=malloc(200000),*b=malloc(200000);
  for(int f=1;f<argc;f++){FILE*fp=fopen(argv[f],"rb"); if(!fp)continue; int n;
   while((n=fread(buf,1,131072,fp))>0){ if(n<4096) continue; blocks++;
    clock_t c0=clock(); int la=z(buf,n,a,200000,0); t9+=clock()-c0;
    for(int i=0;i<7;i++){clock_t c1=clock(); int lb=z(buf,n,b,200000,chains[i]); tc[i]+=clock()-c1; if(la==lb&&!memcmp(a,b,la)) same[i]++;}
   } fclose(fp);}
  printf("blocks %ld, level9 %.2fs\n",blocks,t9/CLOCKS_PER_SEC);
  for(int i=0;i<7;i++) printf("chain %4d: identical %ld (%.1f%%), %.2fs\n",chains[i],same[i],100.0*same[i]/blocks,tc[i]/CLOCKS_PER_SEC);
}
